import pytest

from danemilter.errors import InputError
from danemilter.names import (
    Destination,
    delivery_destination,
    domain_of_address,
    normalize_domain,
)


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


def _local(domain: str) -> bool:
    return domain in ("local.example", "mx.local.example")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("<user@Example.ORG>", "example.org"),
        ("user@example.org", "example.org"),
        ('<"odd@local"@example.org>', "example.org"),
        ("<@relay.example,@hop.example:user@final.example>", "final.example"),
        ("<user@bücher.example>", "xn--bcher-kva.example"),
        ("<user@example.org.>", "example.org"),
        ("<u@_srv.example.org>", "_srv.example.org"),
        # Postfix's rewriting at its defaults (trivial-rewrite resolve_addr):
        ("<u%far.example>", "far.example"),
        ("<u%x%far.example>", "far.example"),           # the rightmost % first
        ("<far.example!u>", "far.example"),
        ("<a.example!b.example!u>", "a.example"),       # the leftmost bang is the next hop
        ("<far.example!u%other.example>", "far.example"),  # bang before percent
        ("<u@far.example@>", "far.example"),
        ("<u%far.example@local.example>", "far.example"),
        ("<u%far.example@mx.local.example@local.example>", "far.example"),
        ('<"u@far.example"@local.example>', "far.example"),
        ('<"u%far.example"@local.example>', "far.example"),
        ('<"far.example!u"@local.example>', "far.example"),
        ("<far.example!u@local.example>", "far.example"),
        ("<u@far.example@local.example>", "far.example"),
        ('<"u@x"@far.example>', "far.example"),         # not local: its quoted part is theirs
    ],
)
def test_delivery_destination(address: str, expected: str) -> None:
    assert delivery_destination(address, _local) == Destination(expected)


@pytest.mark.parametrize("address", ["<u@local.example>", "<postmaster>", "<PostMaster>",
                                     r"<u\@far.example@local.example>",
                                     '<"u"@local.example>', '<"a.b"@local.example>'])
def test_local_recipients(address: str) -> None:
    assert delivery_destination(address, _local) == Destination(None, local=True)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("<>", "no domain"),
        ("<u>", "no domain"),
        ('<"u@far.example">', "quoted"),
        ("<u@[192.0.2.1]>", "address literal"),
        ("<u%far.example@[192.0.2.1]>", "address literal"),
        ("<u@bad..example>", "not a valid DNS name"),
        ("<u@a%b@c(comment)>", "not a valid DNS name"),
        ("<" + "@".join(["u"] + ["local.example"] * 40) + ">", "rewrites"),
    ],
)
def test_undetermined_destinations(address: str, why: str) -> None:
    destination = delivery_destination(address, _local)
    assert destination.domain is None and not destination.local
    assert why in destination.reason
    assert "%" not in destination.reason and "example" not in destination.reason


def test_domain_of_address_is_the_destination_without_local_domains() -> None:
    assert domain_of_address("<u%far.example@local.example>") == "local.example"
    assert domain_of_address("<u@far.example@>") == "far.example"
    for address in ("<>", "<postmaster>", "<u@[192.0.2.1]>"):
        with pytest.raises(InputError):
            domain_of_address(address)


def test_the_fast_path_for_plain_addresses_agrees_with_rewriting() -> None:
    # Plain addresses skip the rewriting loop; on random ones both must say the same.
    import random

    from danemilter import names

    seed = random.randrange(2**32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    local_chars = "abcXYZ019.+_=-"
    domain_chars = "abcxyz019.-_"
    locals_ = {"local.example", "sub.local.example"}
    for _ in range(5000):
        local = "".join(rng.choice(local_chars) for _ in range(rng.randint(1, 12)))
        domain = rng.choice(["local.example", "Sub.Local.Example.", ""]) or "".join(
            rng.choice(domain_chars) for _ in range(rng.randint(1, 20)))
        address = f"<{local}@{domain}>"
        assert names.delivery_destination(address, locals_.__contains__) == names.rewrite(
            f"{local}@{domain}", locals_.__contains__), (seed, address)
