"""The policy socket's keys in the policy file: where it listens, its mode and group."""

from __future__ import annotations

import pytest

from danemilter.config import ConfigErrors, parse

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(("text", "expected"), [
    ("listen: unix:/var/spool/postfix/danemilter/danemilter.sock\n",
     "unix:/var/spool/postfix/danemilter/policy.sock"),
    ("listen: inet:8891@127.0.0.1\n", None),
    # systemd's socket named "policy" when it passes one (danemilter-policy.socket).
    ("listen: systemd\n", "systemd"),
    ("listen: systemd\npolicy_socket: off\n", None),
    ("listen: systemd\npolicy_socket: unix:/run/d/p.sock\n", "unix:/run/d/p.sock"),
    ("listen: unix:/run/d/m.sock\npolicy_socket: systemd\n", "systemd"),
    ("listen: unix:/run/d/m.sock\npolicy_socket: off\n", None),
    ("listen: unix:/run/d/m.sock\npolicy_socket: \"off\"\n", None),
    ("policy_socket: unix:/run/danemilter/policy.sock\n", "unix:/run/danemilter/policy.sock"),
    ("policy_socket: inet:8892@127.0.0.1\n", "inet:8892@127.0.0.1"),
])
def test_policy_socket_listen(text: str, expected: str | None) -> None:
    assert parse(text, "t.yaml").policy_listen() == expected


def test_policy_socket_mode_and_group() -> None:
    settings = parse("socket_mode: \"0660\"\nsocket_group: postfix\n"
                     "policy_socket_mode: \"0666\"\npolicy_socket_group: Debian-exim\n",
                     "t.yaml")
    assert (settings.policy_socket_mode, settings.policy_socket_group) == \
        (0o666, "Debian-exim")
    plain = parse("socket_mode: \"0660\"\n", "t.yaml")
    assert (plain.policy_socket_mode, plain.policy_socket_group) == (None, None)


@pytest.mark.parametrize(("text", "message"), [
    ("policy_socket: systemd.sock\n", "t.yaml:1: policy_socket must be unix:/PATH"),
    ("policy_socket: /run/x.sock\n", "t.yaml:1: policy_socket must be unix:/PATH"),
    ("policy_socket: yes\n", "t.yaml:1: policy_socket must be"),
    ("\npolicy_socket_mode: \"999\"\n", "t.yaml:2: policy_socket_mode must be an octal"),
    ("policy_socket_group: \"\"\n", "t.yaml:1: policy_socket_group must be a non-empty"),
])
def test_bad_policy_socket_keys(text: str, message: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse(text, "t.yaml")
    assert str(caught.value).startswith(message), str(caught.value)
