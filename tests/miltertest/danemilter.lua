-- danemilter driven by OpenDKIM's miltertest, an independent MTA-side protocol peer.
-- Expects the milter at $DANEMILTER_SOCKET with policy "dane: require, on_fail: reject"
-- over the DNSSEC test bed (see tests/integration/test_miltertest.py).

local socket = os.getenv("DANEMILTER_SOCKET")
local HEADER = "X-DANE-Status"

local function check(condition, message)
	if not condition then
		error(message, 2)
	end
end

local function run()
	check(socket ~= nil, "DANEMILTER_SOCKET is not set")
	mt.set_timeout(30)
	local conn = mt.connect(socket, 50, 0.1)
	check(conn ~= nil, "cannot connect to " .. socket)

	-- Offer what Postfix offers: every action and every protocol step the milter may skip.
	local steps = SMFIP_NOCONNECT + SMFIP_NOHELO + SMFIP_NOMAIL + SMFIP_NORCPT +
		SMFIP_NOBODY + SMFIP_NOHDRS + SMFIP_NOEOH + SMFIP_NOUNKNOWN + SMFIP_NODATA +
		SMFIP_NR_HDR
	local actions = SMFIF_ADDHDRS + SMFIF_CHGHDRS + SMFIF_QUARANTINE + SMFIF_SETSYMLIST
	-- miltertest's negotiate takes the protocol steps before the actions (its manual
	-- lists them the other way round; the milter's view of the offer shows this order).
	check(mt.negotiate(conn, 6, steps, actions) == nil, "negotiation failed")
	check(mt.conninfo(conn, "client.test", "127.0.0.1") == nil, "conninfo failed")

	-- Negotiation happened with the first command. The milter negotiates away what it
	-- does not need; skip those steps as an MTA would.
	check(mt.test_option(conn, SMFIP_NOHELO), "HELO should be negotiated away")
	check(mt.test_option(conn, SMFIP_NOBODY), "BODY should be negotiated away")
	check(mt.test_option(conn, SMFIP_NODATA), "DATA should be negotiated away")
	check(mt.test_option(conn, SMFIP_NOEOH), "EOH should be negotiated away")
	check(mt.test_option(conn, SMFIP_NR_HDR), "header callbacks should need no reply")
	check(not mt.test_option(conn, SMFIP_NORCPT), "RCPT must stay")
	check(not mt.test_option(conn, SMFIP_NOHDRS), "headers must stay (forged ones are removed)")
	check(mt.mailfrom(conn, "<alice@client.test>") == nil, "mailfrom failed")

	mt.macro(conn, SMFIC_RCPT, "i", "4MLTTEST")
	check(mt.rcptto(conn, "<a@ee.secure.test>") == nil, "rcpt ee failed")
	check(mt.getreply(conn) == SMFIR_CONTINUE, "a DANE domain must be accepted")

	check(mt.rcptto(conn, "<b@plain.insecure.test>") == nil, "rcpt plain failed")
	check(mt.getreply(conn) == SMFIR_REPLYCODE, "a non-DANE domain must get a reply code")

	check(mt.rcptto(conn, "<c@nullmx.secure.test>") == nil, "rcpt nullmx failed")
	check(mt.getreply(conn) == SMFIR_REPLYCODE, "a null-MX domain must get a reply code")

	check(mt.header(conn, HEADER, "ee.secure.test; status=forged") == nil, "header failed")
	if not mt.test_option(conn, SMFIP_NOEOH) then
		check(mt.eoh(conn) == nil, "eoh failed")
	end
	if not mt.test_option(conn, SMFIP_NOBODY) then
		check(mt.bodystring(conn, "hello\r\n") == nil, "body failed")
	end
	check(mt.eom(conn) == nil, "eom failed")
	check(mt.getreply(conn) == SMFIR_CONTINUE, "eom must continue")

	check(mt.eom_check(conn, MT_HDRINSERT, HEADER,
		"ee.secure.test; status=dane; usage=8; ocsp=off; action=accept"),
		"the status header for ee.secure.test was not inserted")
	check(mt.eom_check(conn, MT_HDRCHANGE, HEADER) or mt.eom_check(conn, MT_HDRDELETE, HEADER),
		"the forged header was not removed")

	mt.disconnect(conn)
	mt.echo("danemilter miltertest: all checks passed")
end

local ok, err = xpcall(run, debug.traceback)
if not ok then
	mt.echo("danemilter miltertest FAILED: " .. tostring(err))
	os.exit(1)
end
