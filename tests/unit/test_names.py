import pytest

from danemilter.errors import InputError
from danemilter.names import domain_of_address, normalize_domain


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("  mx.example.org ", "mx.example.org"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
    ],
)
def test_normalize_domain_accepts(text: str, expected: str) -> None:
    assert normalize_domain(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "bad..example",
        "a" * 64 + ".example",
        ".".join(["abcdefghi"] * 26),  # 259 octets
        "under_score.example",
        "-lead.example",
        "trail-.example",
        "[192.0.2.1]",
        "user@example.com",
        "sp ace.example",
        "\u2603.example",  # a snowman is DISALLOWED in IDNA 2008
    ],
)
def test_normalize_domain_rejects(text: str) -> None:
    with pytest.raises(InputError):
        normalize_domain(text)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("<user@Example.ORG>", "example.org"),
        ("user@example.org", "example.org"),
        ('<"odd@local"@example.org>', "example.org"),
        ("<@relay.example,@hop.example:user@final.example>", "final.example"),
        ("<user@bücher.example>", "xn--bcher-kva.example"),
    ],
)
def test_domain_of_address(address: str, expected: str) -> None:
    assert domain_of_address(address) == expected


@pytest.mark.parametrize("address", ["<>", "<postmaster>", "user@", "<user@[192.0.2.1]>", "@"])
def test_domain_of_address_rejects(address: str) -> None:
    with pytest.raises(InputError):
        domain_of_address(address)
