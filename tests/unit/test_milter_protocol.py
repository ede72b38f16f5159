"""The milter protocol v6 codec (danemilter.milter.protocol) and the server's negotiation,
table by table: every command and response as exact bytes, malformed packets, partial
reads, the order of commands, and what the milter asks the MTA for."""

from __future__ import annotations

import random
import struct
import time

import pytest

from danemilter.milter import protocol as p
from danemilter.milter.server import MACROS, negotiation
from tests.support.mtaclient import ALL_ACTIONS, ALL_STEPS, NEEDED_ACTIONS, parse_negotiation

pytestmark = pytest.mark.timeout(60)

MAX = 1024 * 1024


def packet(code: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + code + data


def decode(data: bytes, max_packet: int = MAX) -> list[p.Command]:
    return p.Decoder(max_packet).feed(data)


# --- every command: bytes <-> typed value ---------------------------------------------

COMMANDS: list[tuple[str, bytes, p.Command]] = [
    ("optneg", packet(b"O", struct.pack(">III", 6, 0x1FF, 0x1FFFFF)),
     p.OptionNegotiation(6, ALL_ACTIONS, ALL_STEPS)),
    ("optneg-v2", packet(b"O", struct.pack(">III", 2, 0x11, 0)),
     p.OptionNegotiation(2, p.Action.ADDHDRS | p.Action.CHGHDRS, p.Step(0))),
    ("macros", packet(b"D", b"Ri\0" b"4MLT1\0" b"{rcpt_addr}\0" b"<a@b.test>\0"),
     p.Macros(b"R", (("i", "4MLT1"), ("{rcpt_addr}", "<a@b.test>")))),
    ("macros-none", packet(b"D", b"C"), p.Macros(b"C", ())),
    ("macros-eom", packet(b"D", b"Ei\0Q9\0"), p.Macros(b"E", (("i", "Q9"),))),
    ("connect-4", packet(b"C", b"mx.client.test\0" b"4" b"\x04\xd2" b"192.0.2.1\0"),
     p.Connect("mx.client.test", "4", 1234, "192.0.2.1")),
    ("connect-6", packet(b"C", b"[2001:db8::1]\0" b"6" b"\x00\x19" b"2001:db8::1\0"),
     p.Connect("[2001:db8::1]", "6", 25, "2001:db8::1")),
    ("connect-unix", packet(b"C", b"localhost\0" b"L" b"\x00\x00" b"/run/x.sock\0"),
     p.Connect("localhost", "L", 0, "/run/x.sock")),
    ("connect-unknown", packet(b"C", b"unknown\0U"), p.Connect("unknown", "U", None, None)),
    ("helo", packet(b"H", b"client.test\0"), p.Helo("client.test")),
    ("mail", packet(b"M", b"<alice@client.test>\0SIZE=100\0BODY=8BITMIME\0"),
     p.Mail("<alice@client.test>", ("SIZE=100", "BODY=8BITMIME"))),
    ("mail-null", packet(b"M", b"<>\0"), p.Mail("<>", ())),
    ("rcpt", packet(b"R", b"<a@ee.secure.test>\0NOTIFY=NEVER\0"),
     p.Rcpt("<a@ee.secure.test>", ("NOTIFY=NEVER",))),
    ("rcpt-utf8", packet(b"R", "<ü@bücher.test>\0".encode()), p.Rcpt("<ü@bücher.test>", ())),
    ("data", packet(b"T"), p.Data()),
    ("header", packet(b"L", b"Subject\0hello world\0"), p.Header("Subject", "hello world")),
    ("header-empty-value", packet(b"L", b"X-Empty\0\0"), p.Header("X-Empty", "")),
    ("end-of-headers", packet(b"N"), p.EndOfHeaders()),
    ("body", packet(b"B", b"line one\r\n\0binary\xff"), p.Body(b"line one\r\n\0binary\xff")),
    ("end-of-message", packet(b"E"), p.EndOfMessage()),
    ("abort", packet(b"A"), p.Abort()),
    ("quit", packet(b"Q"), p.Quit()),
    ("quit-new-connection", packet(b"K"), p.QuitNewConnection()),
    ("unknown", packet(b"U", b"VRFY alice\0"), p.Unknown("VRFY alice")),
]
COMMAND_IDS = [name for name, _, _ in COMMANDS]


@pytest.mark.parametrize(("wire", "command"), [c[1:] for c in COMMANDS], ids=COMMAND_IDS)
def test_command_decodes_to_its_value_and_encodes_to_its_bytes(
    wire: bytes, command: p.Command
) -> None:
    assert decode(wire) == [command]
    assert p.encode_command(command) == wire
    assert decode(p.encode_command(command)) == [command]


def test_every_command_code_is_in_the_table() -> None:
    codes = {wire[4:5] for _, wire, _ in COMMANDS}
    assert codes == {bytes([c]) for c in b"ODCHMRTLNBEAQKU"}


def test_end_of_message_may_carry_a_last_body_chunk() -> None:
    # libmilter accepts it; danemilter never asks for the body, so the chunk is dropped.
    assert decode(packet(b"E", b"last chunk")) == [p.EndOfMessage()]


def test_surrogate_escapes_keep_non_utf8_octets_on_the_round_trip() -> None:
    wire = packet(b"R", b"<\xff@x.test>\0")
    (command,) = decode(wire)
    assert isinstance(command, p.Rcpt)
    assert p.encode_command(command) == wire


def test_one_read_carrying_many_commands_decodes_them_in_order() -> None:
    stream = b"".join(wire for _, wire, _ in COMMANDS)
    assert decode(stream) == [command for _, _, command in COMMANDS]


# --- every response: typed value -> bytes -> what the MTA reads ------------------------

RESPONSES: list[tuple[str, bytes, bytes, bytes]] = [
    ("continue", p.CONTINUE, b"c", b""),
    ("accept", p.ACCEPT, b"a", b""),
    ("reject", p.REJECT, b"r", b""),
    ("tempfail", p.TEMPFAIL, b"t", b""),
    ("discard", p.DISCARD, b"d", b""),
    ("replycode", p.reply_code(550, "5.7.4", "no DANE for x.test"), b"y",
     b"550 5.7.4 no DANE for x.test\0"),
    ("replycode-one-line", p.reply_code(451, "4.3.0", "100%\r\nlocal  problem"), b"y",
     b"451 4.3.0 100%% local problem\0"),
    ("addheader", p.add_header("X-DANE-Status", "a; b"), b"h", b"X-DANE-Status\0a; b\0"),
    ("insheader", p.insert_header(1, "X-DANE-Status", "v"), b"i",
     b"\0\0\0\x01X-DANE-Status\0v\0"),
    ("chgheader-delete", p.change_header(2, "X-DANE-Status", ""), b"m",
     b"\0\0\0\x02X-DANE-Status\0\0"),
    ("quarantine", p.quarantine("DANE policy\nfor x"), b"q", b"DANE policy for x\0"),
    ("negotiate", p.negotiate_reply(6, NEEDED_ACTIONS, p.Step.NR_HDR), b"O",
     struct.pack(">III", 6, 0x31, 0x80)),
    ("negotiate-macros", p.negotiate_reply(6, NEEDED_ACTIONS | p.Action.SETSYMLIST,
                                           p.Step.NOHELO, MACROS), b"O",
     struct.pack(">III", 6, 0x131, 0x2) + b"\0\0\0\x02{auth_authen}\0"
     b"\0\0\0\x03i\0" b"\0\0\0\x05i\0"),
]


@pytest.mark.parametrize(("wire", "code", "data"), [r[1:] for r in RESPONSES],
                         ids=[r[0] for r in RESPONSES])
def test_response_encodes_to_its_bytes_and_decodes_back(wire: bytes, code: bytes,
                                                        data: bytes) -> None:
    assert wire == packet(code, data)
    responses, rest = p.decode_responses(wire + wire[:3])
    assert responses == [p.Response(code, data)] and rest == wire[:3]


def test_response_strings_are_the_nul_separated_fields() -> None:
    ((response,), _) = p.decode_responses(p.add_header("X-A", "value"))
    assert response.strings == ["X-A", "value"]
    ((response,), _) = p.decode_responses(p.CONTINUE)
    assert response.strings == []


def test_negotiation_reply_with_macro_lists_parses_back() -> None:
    ((reply,), _) = p.decode_responses(p.negotiate_reply(
        6, NEEDED_ACTIONS | p.Action.SETSYMLIST, p.Step.NR_HDR, MACROS))
    assert parse_negotiation(reply) == (6, NEEDED_ACTIONS | p.Action.SETSYMLIST,
                                        p.Step.NR_HDR,
                                        {2: "{auth_authen}", 3: "i", 5: "i"})


@pytest.mark.parametrize(("code", "xcode"), [(250, "2.0.0"), (650, "6.0.0"), (550, "4.7.1"),
                                             (451, "")])
def test_reply_code_refuses_what_is_not_a_matching_4xx_or_5xx(code: int, xcode: str) -> None:
    with pytest.raises(ValueError, match="4xx/5xx"):
        p.reply_code(code, xcode, "text")


# --- malformed packets ------------------------------------------------------------------

MALFORMED: list[tuple[str, bytes, str]] = [
    ("length-0", b"\0\0\0\0", "packet of length 0"),
    ("over-max", struct.pack(">I", MAX + 1) + b"H", f"exceeds the limit of {MAX}"),
    ("huge-length", b"\xff\xff\xff\xff", "packet of 4294967295 octets exceeds the limit"),
    ("unknown-command", packet(b"Z", b"x\0"), "unknown command b'Z'"),
    ("unknown-command-nul", packet(b"\0"), "unknown command b'\\x00'"),
    ("helo-missing-nul", packet(b"H", b"client.test"), "HELO: data does not end with NUL"),
    ("helo-empty", packet(b"H"), "HELO: data does not end with NUL"),
    ("helo-extra-nul", packet(b"H", b"client\0.test\0"), "HELO: 2 strings where 1 belong"),
    ("header-extra-nul", packet(b"L", b"Sub\0ject\0value\0"),
     "header: 3 strings where 2 belong"),
    ("header-nul-in-value", packet(b"L", b"Subject\0va\0lue\0"),
     "header: 3 strings where 2 belong"),
    ("header-no-value", packet(b"L", b"Subject\0"), "header: 1 strings where 2 belong"),
    ("header-no-name", packet(b"L", b"\0value\0"), "header without a name"),
    ("header-missing-nul", packet(b"L", b"Subject\0value"), "header: data does not end"),
    ("mail-empty", packet(b"M"), "MAIL: data does not end with NUL"),
    ("rcpt-missing-nul", packet(b"R", b"<a@b.test>"), "RCPT: data does not end with NUL"),
    ("unknown-two-strings", packet(b"U", b"VRFY\0x\0"),
     "unknown command: 2 strings where 1 belong"),
    ("connect-empty", packet(b"C"), "connect: truncated"),
    ("connect-no-family", packet(b"C", b"host\0"), "connect: truncated"),
    ("connect-hostname-only", packet(b"C", b"host"), "connect: truncated"),
    ("connect-no-port", packet(b"C", b"host\x004\x00"), "connect: truncated address"),
    ("connect-address-missing-nul", packet(b"C", b"host\x004\x00\x19192.0.2.1"),
     "connect address: data does not end with NUL"),
    ("connect-address-extra-nul", packet(b"C", b"host\x004\x00\x19192.0\0.2.1\0"),
     "connect address: 2 strings where 1 belong"),
    ("connect-unknown-family", packet(b"C", b"host\0X\x00\x19a\0"),
     "connect: unknown address family 'X'"),
    ("connect-U-with-data", packet(b"C", b"host\0U\x00\x19a\0"),
     "connect: data after an unknown family"),
    ("macros-odd-pairs", packet(b"D", b"Ri\0Q1\0j\0"), "macros: a name without a value"),
    ("macros-name-only", packet(b"D", b"Ri\0"), "macros: too few strings"),
    ("macros-missing-nul", packet(b"D", b"Ri\0Q1"), "macros: data does not end with NUL"),
    ("macros-unknown-command", packet(b"D", b"Zi\0v\0"), "macros for an unknown command"),
    ("macros-no-command", packet(b"D"), "macros for an unknown command"),
    ("optneg-short", packet(b"O", b"\0" * 11), "option negotiation: 11 octets, not 12"),
    ("data-with-data", packet(b"T", b"x"), "DATA carries 1 unexpected octets"),
    ("eoh-with-data", packet(b"N", b"xy"), "end of headers carries 2 unexpected octets"),
    ("abort-with-data", packet(b"A", b"x"), "abort carries 1 unexpected octets"),
    ("quit-with-data", packet(b"Q", b"x"), "quit carries 1 unexpected octets"),
    ("K-with-data", packet(b"K", b"x"), "quit (new connection) carries 1 unexpected"),
]


@pytest.mark.parametrize(("wire", "message"), [m[1:] for m in MALFORMED],
                         ids=[m[0] for m in MALFORMED])
def test_malformed_packet_raises_a_protocol_error_saying_what(wire: bytes, message: str) -> None:
    with pytest.raises(p.ProtocolError) as caught:
        decode(wire)
    assert message in str(caught.value)
    # Also behind a good packet in the same read, and whatever follows it.
    with pytest.raises(p.ProtocolError) as behind:
        decode(packet(b"A") + wire + packet(b"Q"))
    assert str(behind.value) == str(caught.value)


def test_an_oversized_length_is_refused_before_its_data_arrives() -> None:
    decoder = p.Decoder(65536)
    assert decoder.feed(struct.pack(">I", 65536) + b"B") == []  # at the limit: waits
    with pytest.raises(p.ProtocolError, match="65537 octets exceeds the limit of 65536"):
        p.Decoder(65536).feed(struct.pack(">I", 65537))


def test_a_packet_of_exactly_max_packet_octets_is_accepted() -> None:
    chunk = b"x" * (65536 - 1)
    assert decode(packet(b"B", chunk), 65536) == [p.Body(chunk)]


# --- partial reads ------------------------------------------------------------------------

STREAM = b"".join(wire for _, wire, _ in COMMANDS)
ALL_COMMANDS = [command for _, _, command in COMMANDS]


@pytest.mark.parametrize("offset", range(len(STREAM) + 1))
def test_a_stream_split_at_any_offset_decodes_the_same(offset: int) -> None:
    decoder = p.Decoder(MAX)
    first = decoder.feed(STREAM[:offset])
    assert decoder.pending == offset - sum(len(p.encode_command(c)) for c in first)
    assert first + decoder.feed(STREAM[offset:]) == ALL_COMMANDS
    assert decoder.pending == 0


def test_a_stream_fed_one_octet_at_a_time_decodes_the_same() -> None:
    decoder = p.Decoder(MAX)
    got: list[p.Command] = []
    for index in range(len(STREAM)):
        got.extend(decoder.feed(STREAM[index:index + 1]))
    assert got == ALL_COMMANDS
    assert decoder.pending == 0


def test_every_command_split_at_every_octet_decodes_the_same() -> None:
    for name, wire, command in COMMANDS:
        for offset in range(len(wire) + 1):
            decoder = p.Decoder(MAX)
            head = decoder.feed(wire[:offset])
            assert decoder.pending == (0 if offset == len(wire) else offset), name
            assert head + decoder.feed(wire[offset:]) == [command], (name, offset)


def test_a_malformed_packet_split_anywhere_still_raises() -> None:
    wire = packet(b"H", b"a\0b\0")
    for offset in range(1, len(wire)):
        decoder = p.Decoder(MAX)
        assert decoder.feed(wire[:offset]) == []
        with pytest.raises(p.ProtocolError, match="HELO: 2 strings"):
            decoder.feed(wire[offset:])


def test_a_large_packet_trickled_in_tiny_reads_costs_linear_time() -> None:
    # A peer sending a max-size packet a few octets per read must not make every read
    # copy everything received so far: quadratic, 1.8 s of loop for 1 MiB in 16-octet
    # reads (half a minute in 1-octet reads) before the fix, ~30 ms after.
    wire = packet(b"B", b"z" * (MAX - 1)) + packet(b"A")
    decoder = p.Decoder(MAX)
    started = time.perf_counter()
    got: list[p.Command] = []
    for index in range(0, len(wire), 16):
        got.extend(decoder.feed(wire[index:index + 16]))
    elapsed = time.perf_counter() - started
    assert got == [p.Body(b"z" * (MAX - 1)), p.Abort()]
    assert elapsed < 0.6, f"{elapsed:.2f} s to decode {MAX} octets in 16-octet reads"


# --- order of commands ----------------------------------------------------------------------

LETTERS: dict[str, p.Command] = {
    "O": p.OptionNegotiation(6, ALL_ACTIONS, ALL_STEPS),
    "D": p.Macros(b"R", (("i", "Q1"),)),
    "C": p.Connect("client.test", "4", 25, "192.0.2.1"),
    "H": p.Helo("client.test"),
    "M": p.Mail("<a@client.test>", ()),
    "R": p.Rcpt("<b@x.test>", ()),
    "T": p.Data(),
    "L": p.Header("Subject", "s"),
    "N": p.EndOfHeaders(),
    "B": p.Body(b"text"),
    "E": p.EndOfMessage(),
    "A": p.Abort(),
    "Q": p.Quit(),
    "K": p.QuitNewConnection(),
    "U": p.Unknown("VRFY x"),
}

LEGAL = {
    "postfix-negotiated-away": "O DC DM M DR R DR R L L DE E Q",
    "postfix-every-step": "O DC C DH H DM M DR R R DT T L L N B B DE E Q",
    "postfix-rejected-rcpt-then-abort": "O C M R A Q",
    "postfix-abort-then-new-message": "O C M R L A M R L E Q",
    "several-messages": "O C M R L E M R R L E M R E A Q",
    "helo-again-after-abort": "O C H M R A H M R T L N B E Q",
    "helo-again-after-message": "O C H M R L E H M R L E Q",
    "abort-before-mail": "O C A M R E Q",
    "abort-storm": "O C A A A M A A M R A A Q",
    "abort-right-after-negotiation": "O A C M R E Q",
    "no-connect-step": "O M R L E Q",
    "data-without-headers": "O C M R T E Q",
    "unknown-smtp-command": "O C U M U R E Q",
    "sendmail-K-reuses-the-connection": "O C H M R T L N B E K C H M R L E K C Q",
    "sendmail-K-mid-transaction": "O C M R K C M R E Q",
    "K-right-after-negotiation": "O K C M R E Q",
    "quit-before-negotiation": "Q",
    "quit-mid-transaction": "O C M R L Q",
}

ILLEGAL = {
    "rcpt-before-mail": ("O C R", "RCPT outside a transaction"),
    "rcpt-after-abort": ("O C M R A R", "RCPT outside a transaction"),
    "rcpt-after-content": ("O C M R T R", "RCPT outside a transaction or after its content"),
    "rcpt-after-header": ("O C M R L R", "after its content"),
    "rcpt-after-K": ("O C M K C R", "RCPT outside a transaction"),
    "mail-within-transaction": ("O C M R M", "MAIL within a transaction"),
    "mail-after-data": ("O C M R T L M", "MAIL within a transaction"),
    "mail-twice": ("O C M M", "MAIL within a transaction"),
    "helo-within-transaction": ("O C M R H", "HELO within a transaction"),
    "connect-twice": ("O C C", "connect within a session"),
    "connect-within-transaction": ("O C M R C", "connect within a session"),
    "connect-after-message": ("O C M R E C", "connect within a session"),
    "optneg-twice": ("O O", "option negotiation repeated"),
    "optneg-mid-session": ("O C M O", "option negotiation repeated"),
    "header-outside-transaction": ("O C L", "Header outside a transaction"),
    "header-after-message": ("O C M R E L", "Header outside a transaction"),
    "header-after-abort": ("O C M R A L", "Header outside a transaction"),
    "data-outside-transaction": ("O C T", "Data outside a transaction"),
    "eoh-outside-transaction": ("O C N", "EndOfHeaders outside a transaction"),
    "body-outside-transaction": ("O C B", "Body outside a transaction"),
    "eom-outside-transaction": ("O C E", "end of message outside a transaction"),
    "eom-twice": ("O C M R E E", "end of message outside a transaction"),
    **{f"{letter}-before-optneg": (letter, "before option negotiation")
       for letter in "DCHMRTLNBEAKU"},
}


def command(token: str) -> p.Command:
    """A letter of LETTERS; "DX" is the macro packet for command X."""
    if len(token) == 2:
        return p.Macros(token[1].encode(), (("i", "Q1"),))
    return LETTERS[token]


def run_sequence(letters: str) -> None:
    sequencer = p.Sequencer()
    for token in letters.split():
        sequencer.check(command(token))


@pytest.mark.parametrize("letters", LEGAL.values(), ids=LEGAL.keys())
def test_legal_postfix_and_sendmail_orders_are_accepted(letters: str) -> None:
    run_sequence(letters)


@pytest.mark.parametrize(("letters", "message"), ILLEGAL.values(), ids=ILLEGAL.keys())
def test_illegal_orders_are_refused_at_the_offending_command(letters: str, message: str) -> None:
    *good, bad = letters.split()
    sequencer = p.Sequencer()
    for token in good:
        sequencer.check(command(token))
    with pytest.raises(p.ProtocolError) as caught:
        sequencer.check(command(bad))
    assert message in str(caught.value)


# --- the server's negotiation -------------------------------------------------------------


def reply_of(offer: p.OptionNegotiation) -> tuple[tuple[int, p.Action, p.Step, dict[int, str]],
                                                  p.Step]:
    wire, steps = negotiation(offer)
    ((response,), rest) = p.decode_responses(wire)
    assert rest == b""
    return parse_negotiation(response), steps


def test_a_full_postfix_offer_gets_only_what_the_session_needs() -> None:
    (version, actions, steps, macros), agreed = reply_of(
        p.OptionNegotiation(6, ALL_ACTIONS, ALL_STEPS))
    assert version == 6
    assert actions == NEEDED_ACTIONS | p.Action.SETSYMLIST
    assert steps == agreed == (p.Step.NOHELO | p.Step.NODATA | p.Step.NOEOH | p.Step.NOBODY
                               | p.Step.NOUNKNOWN | p.Step.NR_CONN | p.Step.NR_MAIL
                               | p.Step.NR_HDR)
    # RCPT is answered, and headers are read (forged status headers are removed).
    assert not steps & (p.Step.NORCPT | p.Step.NOHDRS | p.Step.NR_RCPT | p.Step.NOMAIL)
    assert macros == {2: "{auth_authen}", 3: "i", 5: "i"}


def test_without_setsymlist_no_macro_list_is_sent() -> None:
    (_, actions, _, macros), _ = reply_of(p.OptionNegotiation(6, NEEDED_ACTIONS, ALL_STEPS))
    assert actions == NEEDED_ACTIONS
    assert macros == {}


def test_without_no_reply_flags_every_step_is_answered() -> None:
    no_nr = p.Step(sum(int(s) for s in p.Step if not str(s.name).startswith(("NR_", "MDS"))))
    (_, _, steps, _), agreed = reply_of(p.OptionNegotiation(6, ALL_ACTIONS, no_nr))
    assert steps == agreed
    assert not steps & (p.Step.NR_CONN | p.Step.NR_MAIL | p.Step.NR_HDR | p.Step.NR_HELO)
    assert steps == p.Step.NOHELO | p.Step.NODATA | p.Step.NOEOH | p.Step.NOBODY \
        | p.Step.NOUNKNOWN


def test_an_mta_offering_no_steps_is_asked_for_none() -> None:
    (_, _, steps, _), agreed = reply_of(p.OptionNegotiation(6, ALL_ACTIONS, p.Step(0)))
    assert steps == agreed == p.Step(0)


def test_random_offers_are_only_ever_asked_for_what_they_offered() -> None:
    rng = random.Random(11)
    for _ in range(500):
        offer = p.OptionNegotiation(rng.choice([2, 3, 4, 5, 6, 7, 1000]),
                                    p.Action(rng.getrandbits(9)) | NEEDED_ACTIONS,
                                    p.Step(rng.getrandbits(21)))
        (version, actions, steps, macros), agreed = reply_of(offer)
        assert version == min(offer.version, 6)
        assert actions & ~offer.actions == 0, offer
        assert steps & ~offer.steps == 0, offer
        assert agreed == steps
        assert bool(macros) == bool(offer.actions & p.Action.SETSYMLIST)


@pytest.mark.parametrize("missing", [p.Action.ADDHDRS, p.Action.CHGHDRS, p.Action.QUARANTINE,
                                     NEEDED_ACTIONS])
def test_an_mta_not_allowing_header_edits_or_quarantine_is_refused(missing: p.Action) -> None:
    offer = p.OptionNegotiation(6, ALL_ACTIONS & ~missing, ALL_STEPS)
    with pytest.raises(p.ProtocolError) as caught:
        negotiation(offer)
    assert "does not allow the actions" in str(caught.value)
    for flag in missing:
        assert flag.name in str(caught.value)  # type: ignore[operator]


@pytest.mark.parametrize("version", [0, 1])
def test_a_protocol_version_before_2_is_refused(version: int) -> None:
    with pytest.raises(p.ProtocolError, match=f"version {version} is too old"):
        negotiation(p.OptionNegotiation(version, ALL_ACTIONS, ALL_STEPS))
