"""
Tests for L{faketcp_twisted.core.auth}, the pre-shared-key authentication of
connections: the proofs, the sans-IO state machine (resends, deadline,
hold, answers), its wiring into L{FlowConnection} (driven in memory with a
fake demultiplexer and a fake clock, packets crossing through the codec),
and the C{key}/C{keyFile}/C{authTimeout} arguments of the endpoint strings.
None of this needs root; the namespace tests are in C{tests.test_hardening}.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections import Counter
from typing import Any

from hypothesis import given, settings, strategies as st
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from faketcp_twisted.core.auth import (
    DEFAULT_TIMEOUT,
    PROOF_SIZE,
    Authenticator,
    AuthKey,
    AuthState,
    Refusal,
    RefusalLog,
    auth_key,
)
from faketcp_twisted.core.flow import Flow, FlowKey
from faketcp_twisted.core.segment import parse_packet
from faketcp_twisted.core.table import Role
from faketcp_twisted.engine.connection import Ending, FlowConnection
from faketcp_twisted.engine.contracts import Connection
from faketcp_twisted.engine.options import FlowOptions, redact
from tests.test_flow import CLIENT_ADDR, CLIENT_ISN, CLIENT_PORT, MSS, SERVER_ADDR, SERVER_ISN, SERVER_PORT

KEY = AuthKey.from_text("correct horse battery staple")
OTHER_KEY = AuthKey.from_text("another key")


def pair(
    client_key: AuthKey = KEY,
    server_key: AuthKey = KEY,
    client_isn: int = CLIENT_ISN,
    server_isn: int = SERVER_ISN,
    now: float = 0.0,
) -> tuple[Authenticator, Authenticator]:
    """
    A client's and a server's authenticator of one connection.
    """
    client = Authenticator(client_key, Role.CLIENT, client_isn, server_isn, now)
    server = Authenticator(server_key, Role.SERVER, server_isn, client_isn, now)
    return client, server


def take(authenticator: Authenticator) -> list[bytes]:
    """
    What C{authenticator} wants sent, clearing it.
    """
    sent, authenticator.outgoing = authenticator.outgoing, []
    return sent


class ProofTests(SynchronousTestCase):
    """
    A proof is an HMAC-SHA256 bound to the role and both initial sequence
    numbers.
    """

    def test_size(self) -> None:
        """
        A proof is one SHA-256 output.
        """
        self.assertEqual(len(KEY.proof(Role.CLIENT, 1, 2)), PROOF_SIZE)

    def test_deterministic(self) -> None:
        """
        Both sides compute the same proof from the same key and numbers,
        also from separately made keys.
        """
        self.assertEqual(
            KEY.proof(Role.CLIENT, CLIENT_ISN, SERVER_ISN),
            AuthKey.from_text("correct horse battery staple").proof(Role.CLIENT, CLIENT_ISN, SERVER_ISN),
        )

    def test_bound(self) -> None:
        """
        Changing the role, either number or the key changes the proof.
        """
        base = KEY.proof(Role.CLIENT, CLIENT_ISN, SERVER_ISN)
        variants = [
            KEY.proof(Role.SERVER, CLIENT_ISN, SERVER_ISN),
            KEY.proof(Role.CLIENT, CLIENT_ISN + 1, SERVER_ISN),
            KEY.proof(Role.CLIENT, CLIENT_ISN, SERVER_ISN + 1),
            KEY.proof(Role.CLIENT, SERVER_ISN, CLIENT_ISN),
            OTHER_KEY.proof(Role.CLIENT, CLIENT_ISN, SERVER_ISN),
        ]
        self.assertNotIn(base, variants)
        self.assertEqual(len(set(variants)), len(variants))

    def test_bytesAndTextKeys(self) -> None:
        """
        A text key is its UTF-8 bytes.
        """
        self.assertEqual(
            AuthKey.from_text("clé").proof(Role.CLIENT, 1, 2),
            AuthKey.from_text("clé".encode()).proof(Role.CLIENT, 1, 2),
        )

    def test_reprHidesKey(self) -> None:
        """
        Printing a key shows nothing of it.
        """
        self.assertNotIn("horse", repr(KEY))

    def test_emptyKeyRefused(self) -> None:
        """
        An empty key is an error, not "no authentication".
        """
        self.assertRaises(ValueError, AuthKey.from_text, "")

    def test_keyFile(self) -> None:
        """
        A key file's surrounding whitespace (an editor's newline) is
        ignored.
        """
        with tempfile.NamedTemporaryFile("wb", delete=False) as source:
            source.write(b"  correct horse battery staple\n")
        self.addCleanup(os.unlink, source.name)
        self.assertEqual(
            AuthKey.from_file(source.name).proof(Role.SERVER, 5, 6), KEY.proof(Role.SERVER, 5, 6)
        )

    def test_keyFileErrors(self) -> None:
        """
        A missing or empty key file is a ValueError naming the file.
        """
        with tempfile.NamedTemporaryFile("wb", delete=False) as source:
            source.write(b"\n")
        self.addCleanup(os.unlink, source.name)
        self.assertIn(source.name, str(self.assertRaises(ValueError, AuthKey.from_file, source.name)))
        missing = source.name + ".missing"
        self.assertIn(missing, str(self.assertRaises(ValueError, AuthKey.from_file, missing)))

    def test_authKeyArguments(self) -> None:
        """
        Neither argument: no key.  Both: an error.
        """
        self.assertIsNone(auth_key(None, None))
        self.assertIsInstance(auth_key("k", None), AuthKey)
        self.assertRaises(ValueError, auth_key, "k", "/some/file")


class ClientAuthenticatorTests(SynchronousTestCase):
    """
    The client sends its proof at once and resends it until the server's
    arrives; it holds the server's data meanwhile.
    """

    def test_sendsProofAtOnce(self) -> None:
        """
        A new client authenticator wants its proof sent.
        """
        client, _server = pair()
        self.assertEqual(take(client), [KEY.proof(Role.CLIENT, CLIENT_ISN, SERVER_ISN)])
        self.assertIs(client.state, AuthState.PENDING)

    def test_resendSchedule(self) -> None:
        """
        Resends come at growing intervals, capped, until the deadline,
        which refuses.
        """
        client, _server = pair()
        take(client)
        times = []
        now = 0.0
        while client.state is AuthState.PENDING:
            wakeup = client.next_wakeup
            assert wakeup is not None
            now = wakeup
            client.poll(now)
            if take(client):
                times.append(round(now, 3))
        self.assertEqual(times, [0.2, 0.6, 1.4, 2.4, 3.4, 4.4])
        self.assertEqual(now, DEFAULT_TIMEOUT)
        self.assertIs(client.refusal, Refusal.TIMEOUT)
        self.assertIsNone(client.next_wakeup)

    def test_acceptsServerProof(self) -> None:
        """
        The server's proof accepts; resends stop.
        """
        client, server = pair()
        for payload in take(client):
            self.assertTrue(server.receive(payload, 0.1))
        answers = take(server)
        self.assertEqual(len(answers), 1)
        self.assertTrue(client.receive(answers[0], 0.1))
        self.assertIs(client.state, AuthState.ACCEPTED)
        self.assertIsNone(client.next_wakeup)
        client.poll(10.0)
        self.assertEqual(take(client), [])

    def test_reflectedProofRefusedAsServerProof(self) -> None:
        """
        Its own proof sent back (an echo server without the key) is not
        the server's proof: it is held as data, and the deadline refuses.
        """
        client, _server = pair()
        (proof,) = take(client)
        self.assertTrue(client.receive(proof, 0.1))
        self.assertIs(client.state, AuthState.PENDING)
        client.poll(DEFAULT_TIMEOUT)
        self.assertIs(client.refusal, Refusal.TIMEOUT)

    def test_holdsDataBeforeProof(self) -> None:
        """
        Data that overtook the server's proof is held, in order, and handed
        over once.
        """
        client, server = pair()
        server.receive(take(client)[0], 0.0)
        self.assertTrue(client.receive(b"greeting", 0.1))
        self.assertTrue(client.receive(b"more", 0.1))
        self.assertTrue(client.receive(take(server)[0], 0.2))
        self.assertEqual(client.take_held(), [b"greeting", b"more"])
        self.assertEqual(client.take_held(), [])

    def test_holdBounded(self) -> None:
        """
        Past the hold's limits, data is dropped and counted.
        """
        client, _server = pair()
        for n in range(Authenticator.heldLimit + 5):
            client.receive(b"%d" % n, 0.1)
        self.assertEqual(len(client.held), Authenticator.heldLimit)
        self.assertEqual(client.held_dropped, 5)
        client2, _server = pair()
        big = b"x" * (Authenticator.heldBytesLimit // 2 + 1)
        client2.receive(big, 0.1)
        client2.receive(big, 0.1)
        self.assertEqual(client2.held_bytes, len(big))
        self.assertEqual(client2.held_dropped, 1)

    def test_afterAcceptance(self) -> None:
        """
        After acceptance copies of the server's proof are swallowed and
        everything else is the application's, a proof-sized payload too.
        """
        client, server = pair()
        server.receive(take(client)[0], 0.0)
        proof = take(server)[0]
        client.receive(proof, 0.1)
        self.assertTrue(client.receive(proof, 0.2))
        self.assertEqual(take(client), [])
        self.assertFalse(client.receive(b"y" * PROOF_SIZE, 0.2))
        self.assertFalse(client.receive(b"data", 0.2))

    def test_refusalClearsHold(self) -> None:
        """
        A refused client drops what it held, and consumes whatever comes.
        """
        client, _server = pair()
        client.receive(b"held", 0.1)
        client.poll(DEFAULT_TIMEOUT)
        self.assertEqual(client.take_held(), [])
        self.assertTrue(client.receive(b"late", 6.0))


class ServerAuthenticatorTests(SynchronousTestCase):
    """
    The server waits silently for the client's proof, refuses anything
    else, and answers every copy of the proof.
    """

    def test_silentUntilProof(self) -> None:
        """
        A server sends nothing before a valid client proof.
        """
        _client, server = pair()
        self.assertEqual(take(server), [])
        self.assertEqual(server.next_wakeup, DEFAULT_TIMEOUT)

    def test_wrongKeyRefused(self) -> None:
        """
        A proof made with another key is refused as a bad proof, and
        nothing is answered.
        """
        client, server = pair(client_key=OTHER_KEY)
        self.assertTrue(server.receive(take(client)[0], 0.1))
        self.assertIs(server.refusal, Refusal.BAD_PROOF)
        self.assertEqual(take(server), [])

    def test_dataRefused(self) -> None:
        """
        A first payload that is not proof-sized is a client without a key.
        """
        _client, server = pair()
        server.receive(b"hello from tcpraw", 0.1)
        self.assertIs(server.refusal, Refusal.UNEXPECTED_DATA)

    def test_replayOnAnotherConnectionRefused(self) -> None:
        """
        A client proof of one connection is refused on another, whose
        server chose another initial sequence number (even when the
        attacker chose the same client number).
        """
        first_client, _first_server = pair()
        captured = take(first_client)[0]
        _client, server = pair(server_isn=SERVER_ISN + 12345)
        server.receive(captured, 0.1)
        self.assertIs(server.refusal, Refusal.BAD_PROOF)

    def test_serverProofNotAcceptedAsClientProof(self) -> None:
        """
        The role label keeps a server proof from passing as a client's.
        """
        _client, server = pair()
        server.receive(KEY.proof(Role.SERVER, CLIENT_ISN, SERVER_ISN), 0.1)
        self.assertIs(server.refusal, Refusal.BAD_PROOF)

    def test_answersEveryCopy(self) -> None:
        """
        Every copy of the client's proof (its resends, after ours was lost)
        is answered, up to the limit; data passes through.
        """
        client, server = pair()
        proof = take(client)[0]
        server.receive(proof, 0.1)
        self.assertIs(server.state, AuthState.ACCEPTED)
        self.assertEqual(len(take(server)), 1)
        for _ in range(Authenticator.answerLimit + 10):
            self.assertTrue(server.receive(proof, 1.0))
        self.assertEqual(len(take(server)), Authenticator.answerLimit - 1)
        self.assertFalse(server.receive(b"application data", 1.0))

    def test_deadline(self) -> None:
        """
        No proof by the deadline: refused.
        """
        _client, server = pair()
        server.poll(DEFAULT_TIMEOUT - 0.01)
        self.assertIs(server.state, AuthState.PENDING)
        server.poll(DEFAULT_TIMEOUT)
        self.assertIs(server.refusal, Refusal.TIMEOUT)


class LossTests(SynchronousTestCase):
    """
    Proofs survive lost segments: the client's resends are answered.
    """

    @settings(max_examples=200, deadline=None)
    @given(
        client_losses=st.lists(st.booleans(), min_size=8, max_size=8),
        server_losses=st.lists(st.booleans(), min_size=8, max_size=8),
        same_key=st.booleans(),
    )
    def test_lossyExchange(self, client_losses: list[bool], server_losses: list[bool], same_key: bool) -> None:
        """
        With any pattern of lost proofs, both sides accept exactly when
        they share the key and some client proof and its answer both got
        through before the deadline; a side never accepts with another
        key.
        """
        client, server = pair(server_key=KEY if same_key else OTHER_KEY)
        now = 0.0
        sent = answered = 0
        delivered_pair = False
        while client.state is AuthState.PENDING:
            for payload in take(client):
                lost = client_losses[sent % len(client_losses)]
                sent += 1
                if lost or server.state is AuthState.REFUSED:
                    continue
                server.receive(payload, now)
                for answer in take(server):
                    lost_answer = server_losses[answered % len(server_losses)]
                    answered += 1
                    if not lost_answer:
                        client.receive(answer, now + 0.01)
                        delivered_pair = True
            wakeup = client.next_wakeup
            if wakeup is None:
                break
            now = wakeup
            client.poll(now)
        if not same_key:
            self.assertIsNot(client.state, AuthState.ACCEPTED)
            self.assertIsNot(server.state, AuthState.ACCEPTED)
            return
        self.assertEqual(client.state is AuthState.ACCEPTED, delivered_pair)
        if delivered_pair:
            self.assertIs(server.state, AuthState.ACCEPTED)


class RefusalLogTests(SynchronousTestCase):
    """
    Refusals are logged once per address per interval, with bounded memory.
    """

    def test_oncePerInterval(self) -> None:
        """
        The first refusal of an address is logged, the next ones within the
        interval are not, the first after it is.
        """
        refusals = RefusalLog()
        self.assertTrue(refusals.should_log("a", 0.0))
        self.assertFalse(refusals.should_log("a", 1.0))
        self.assertTrue(refusals.should_log("b", 1.0))
        self.assertTrue(refusals.should_log("a", RefusalLog.interval + 0.1))

    def test_bounded(self) -> None:
        """
        At most C{limit} addresses are remembered.
        """
        refusals = RefusalLog()
        refusals.limit = 10
        for n in range(100):
            refusals.should_log(str(n), 0.0)
        self.assertEqual(len(refusals._last), 10)


class _Loop:
    """
    The L{EventLoop} services a connection uses, on a fake clock.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def seconds(self) -> float:
        return self.clock.seconds()

    def call_later(self, delay: float, callback: Any, *args: Any) -> Any:
        return self.clock.callLater(delay, callback, *args)


class _Demux:
    """
    The engine's L{Demux} contract in memory, for one connection: what it
    transmits is collected, what it counts is kept.
    """

    def __init__(self, loop: _Loop, role: Role) -> None:
        self.loop = loop
        self.role = role
        self.options = FlowOptions()
        self.sent: list[bytes] = []
        self.drops: Counter[str] = Counter()
        self.detached = False
        self.handed: list[Connection] = []
        self.congested = False
        self.backlog_bytes = 0

    def sockaddr(self, packed: bytes) -> tuple[str, int]:
        return (socket.inet_ntop(socket.AF_INET, packed), 0)

    def transmit(self, packet: bytes, address: tuple[Any, ...]) -> None:
        self.sent.append(packet)

    def count_drop(self, reason: str, count: int = 1) -> None:
        self.drops[reason] += count

    def detach(self, connection: Connection) -> None:
        self.detached = True

    def hand_off(self, connection: Connection) -> socket.socket:
        self.handed.append(connection)
        return connection.socket

    def release_hand_off(self, key: FlowKey) -> None:
        pass


class _Face:
    """
    The engine's L{Face} contract, recording what a connection tells it.
    """

    def __init__(self) -> None:
        self.delivered: list[bytes] = []
        self.endings: list[Ending] = []

    def deliver(self, payload: bytes) -> None:
        self.delivered.append(payload)

    def peer_finished(self) -> None:
        self.endings.append(Ending.DONE)

    def connection_ended(self, ending: Ending, failure: object) -> None:
        self.endings.append(ending)

    def congestion_changed(self, congested: bool) -> None:
        pass


class _ConnectionPair(SynchronousTestCase):
    """
    A client's and a server's connection of one flow, over in-memory
    demultiplexers, on a fake clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        loop = _Loop(self.clock)
        self.client_demux = _Demux(loop, Role.CLIENT)
        self.server_demux = _Demux(loop, Role.SERVER)
        client_flow = Flow.from_handshake(
            FlowKey(CLIENT_ADDR, CLIENT_PORT, SERVER_ADDR, SERVER_PORT), CLIENT_ISN, SERVER_ISN, MSS, 0.0
        )
        server_flow = Flow.from_handshake(
            FlowKey(SERVER_ADDR, SERVER_PORT, CLIENT_ADDR, CLIENT_PORT), SERVER_ISN, CLIENT_ISN, MSS, 0.0
        )
        self.client = FlowConnection(self.client_demux, client_flow, socket.socket())
        self.server = FlowConnection(self.server_demux, server_flow, socket.socket())
        for connection in (self.client, self.server):
            self.addCleanup(connection.socket.close)
        self.faces = {"client": _Face(), "server": _Face()}
        self.results: list[tuple[str, bool]] = []

    def done(self, name: str) -> Any:
        """
        What the connection's owner does once authentication is over: bind
        a face to an accepted connection, and start it.
        """

        def record(connection: FlowConnection, accepted: bool) -> None:
            self.results.append((name, accepted))
            if accepted:
                connection.bind(self.faces[name])
                connection.start()

        return record

    def start(self, client_key: AuthKey = KEY, server_key: AuthKey = KEY) -> None:
        self.server.authenticate(
            Authenticator(server_key, Role.SERVER, SERVER_ISN, CLIENT_ISN, 0.0), self.done("server")
        )
        self.client.authenticate(
            Authenticator(client_key, Role.CLIENT, CLIENT_ISN, SERVER_ISN, 0.0), self.done("client")
        )

    def cross(self, demux: _Demux, to: FlowConnection, drop: int = 0) -> None:
        """
        Hand what C{demux} sent to C{to}, losing its first C{drop} data
        segments.
        """
        sent, demux.sent = demux.sent, []
        for packet in sent:
            segment = parse_packet(packet)
            if segment.payload and drop:
                drop -= 1
                continue
            to.segment_received(segment, self.clock.seconds())


class ConnectionAuthTests(_ConnectionPair):
    """
    L{FlowConnection.authenticate}: nothing reaches the application before
    the peer's proof; the proofs cross as data segments; failures reset.
    """

    def test_accepted(self) -> None:
        """
        Proofs cross, both sides accept, data then flows; no proof is ever
        delivered.
        """
        self.start()
        self.cross(self.client_demux, self.server)
        self.assertEqual(self.results, [("server", True)])
        self.cross(self.server_demux, self.client)
        self.assertEqual(self.results, [("server", True), ("client", True)])
        self.client.send(b"hello")
        self.cross(self.client_demux, self.server)
        self.assertEqual(self.faces["server"].delivered, [b"hello"])
        self.assertEqual(self.faces["client"].delivered, [])
        self.assertFalse(self.client.authenticating)

    def test_lostServerProof(self) -> None:
        """
        The server's proof is lost and its first data arrives: the client
        holds the data, resends its proof, the server answers again, and
        the held data is delivered first, then what follows.
        """
        self.start()
        self.cross(self.client_demux, self.server)
        self.server.send(b"greeting")
        self.cross(self.server_demux, self.client, drop=1)
        self.assertEqual(self.faces["client"].delivered, [])
        self.clock.advance(0.2)
        self.cross(self.client_demux, self.server)
        self.server.send(b"second")
        self.cross(self.server_demux, self.client)
        self.assertEqual(self.results, [("server", True), ("client", True)])
        self.assertEqual(self.faces["client"].delivered, [b"greeting", b"second"])
        self.assertEqual(self.faces["server"].delivered, [])

    def test_earlyAfterProofKeptForStart(self) -> None:
        """
        Segments that arrived before adoption, the server's proof and then
        its data, are split: the proof accepts, the data is delivered by
        start().
        """
        self.server.authenticate(Authenticator(KEY, Role.SERVER, SERVER_ISN, CLIENT_ISN, 0.0), self.done("server"))
        client_auth = Authenticator(KEY, Role.CLIENT, CLIENT_ISN, SERVER_ISN, 0.0)
        for payload in take(client_auth):
            self.server.segment_received(parse_packet(self.client.flow.send(payload, 0.0) or b""), 0.0)
        self.server.send(b"data")
        self.client.early = [parse_packet(packet) for packet in self.server_demux.sent]
        self.server_demux.sent = []
        self.client.authenticate(client_auth, self.done("client"))
        self.assertEqual(self.results, [("server", True), ("client", True)])
        self.assertEqual(self.faces["client"].delivered, [b"data"])

    def test_wrongKeyResets(self) -> None:
        """
        A wrong key: the server resets, counts, never tells its face; the
        client learns from the RST.
        """
        self.start(client_key=OTHER_KEY)
        self.cross(self.client_demux, self.server)
        self.assertEqual(self.results, [("server", False)])
        self.assertEqual(self.server_demux.drops["auth-bad-proof"], 1)
        self.assertTrue(self.server_demux.detached)
        self.assertEqual(self.faces["server"].endings, [])
        self.cross(self.server_demux, self.client)
        self.assertEqual(self.results, [("server", False), ("client", False)])
        self.assertEqual(self.client_demux.drops["auth-closed"], 1)
        self.assertEqual(self.faces["client"].endings, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeout(self) -> None:
        """
        Nothing from the peer: both sides refuse at their deadline, with
        no timer left behind.
        """
        self.start()
        self.clock.advance(DEFAULT_TIMEOUT)
        self.assertEqual(sorted(self.results), [("client", False), ("server", False)])
        self.assertEqual(self.server_demux.drops["auth-timeout"], 1)
        self.assertEqual(self.client_demux.drops["auth-timeout"], 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """
        A cancelled authentication resets without telling the owner.
        """
        self.start()
        self.client.cancel_authentication()
        self.assertEqual(self.results, [])
        self.assertTrue(self.client_demux.detached)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), DEFAULT_TIMEOUT)


class QuietServerTests(_ConnectionPair):
    """
    A keyed server's connection is L{quiet<FlowConnection.quiet>} until its
    client proved the key: nothing of ours enters a prober's sequence
    space, and nothing of the prober's is acknowledged, so the connection
    can go back to the kernel (a fallback) or be reset.
    """

    def quietServer(self, hand_off: Any = None) -> None:
        self.server.quiet = True
        # Adoption's window announcement, as the engine queues it.
        self.server.flow.pending.append(self.server.flow.bare_ack(0.0))
        self.server.authenticate(
            Authenticator(KEY, Role.SERVER, SERVER_ISN, CLIENT_ISN, 0.0, timeout=30.0), self.done("server"), hand_off
        )

    def probe(self, payload: bytes) -> None:
        """
        A plain TCP client's data reaches the server, MSS by MSS.
        """
        for start in range(0, len(payload), MSS):
            packet = self.client.flow.send(payload[start : start + MSS], self.clock.seconds())
            self.server.segment_received(parse_packet(packet), self.clock.seconds())

    def test_nothingBeforeTheProof(self) -> None:
        """
        Before the client's proof, the server sends nothing: not the
        window announcement, not keepalives, not the ACKs its flow would
        send for data; its first segment is its proof.
        """
        self.quietServer()
        self.server.flow.keepalive_interval = 0.5
        for second in range(1, 4):
            self.clock.advance(1.0)
            self.server.flow.poll(float(second))
            self.server.flush_pending()
        self.assertEqual(self.server_demux.sent, [])
        self.client.authenticate(Authenticator(KEY, Role.CLIENT, CLIENT_ISN, SERVER_ISN, 3.0), self.done("client"))
        self.cross(self.client_demux, self.server)
        self.assertEqual(self.results, [("server", True)])
        self.assertFalse(self.server.quiet)
        first = parse_packet(self.server_demux.sent[0])
        self.assertEqual(len(first.payload), PROOF_SIZE)
        self.assertEqual(first.seq, SERVER_ISN + 1)

    def test_probeHandedOff(self) -> None:
        """
        A prober's request: the connection is handed off (not reset), with
        nothing sent, ever; the refusal is counted, the owner told, and no
        timer is left.
        """
        reasons: list[Refusal] = []

        def hand_off(connection: FlowConnection, refusal: Refusal) -> bool:
            reasons.append(refusal)
            connection.hand_off()
            return True

        self.quietServer(hand_off)
        self.probe(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n" * 100)
        self.assertEqual(reasons, [Refusal.UNEXPECTED_DATA])
        self.assertEqual(self.server_demux.handed, [self.server])
        self.assertEqual(self.server_demux.sent, [])
        self.assertEqual(self.results, [("server", False)])
        self.assertEqual(self.server_demux.drops["auth-unexpected-data"], 1)
        self.assertTrue(self.server.ended)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_silentProberHandedOffAtTheDeadline(self) -> None:
        """
        A prober that sends nothing (waiting for a server's banner) is
        handed off at the authentication deadline.
        """
        reasons: list[Refusal] = []
        self.quietServer(lambda connection, refusal: reasons.append(refusal) or bool(connection.hand_off()))
        self.clock.advance(30.0)
        self.assertEqual(reasons, [Refusal.TIMEOUT])
        self.assertEqual(self.server_demux.sent, [])

    def test_declinedHandOffResets(self) -> None:
        """
        A hand-off that is declined (the fallback is full) leaves the
        refusal's RST, the only thing a quiet server ever sends unproven.
        """
        self.quietServer(lambda connection, refusal: False)
        self.probe(b"\x16\x03\x01" + os.urandom(200))
        self.assertEqual([parse_packet(packet).flags & 0x04 for packet in self.server_demux.sent], [0x04])
        self.assertTrue(self.server_demux.detached)
        self.assertEqual(self.server_demux.handed, [])

    def test_peerResetNotHandedOff(self) -> None:
        """
        A peer that reset its connection is gone: nothing is handed off.
        """
        called: list[Refusal] = []
        self.quietServer(lambda connection, refusal: called.append(refusal) or True)
        self.server.segment_received(parse_packet(self.client.flow.reset(0.0)), 0.0)
        self.assertEqual(called, [])
        self.assertEqual(self.results, [("server", False)])
        self.assertEqual(self.server_demux.sent, [])


class EndpointKeyTests(SynchronousTestCase):
    """
    C{key}, C{keyFile} and C{authTimeout} in endpoint strings.
    """

    def test_serverKey(self) -> None:
        """
        C{key=} with an escaped colon gives the key with the colon.
        """
        endpoint = serverFromString(reactor, r"faketcp:9191:key=a\:b:authTimeout=2.5")
        self.assertEqual(endpoint._auth.proof(Role.CLIENT, 1, 2), AuthKey.from_text("a:b").proof(Role.CLIENT, 1, 2))
        self.assertEqual(endpoint._auth_timeout, 2.5)

    def test_clientKeyFile(self) -> None:
        """
        C{keyFile=} reads the key from the file.
        """
        with tempfile.NamedTemporaryFile("w", delete=False) as source:
            source.write("correct horse battery staple\n")
        self.addCleanup(os.unlink, source.name)
        endpoint = clientFromString(reactor, f"faketcp:host=198.18.0.2:port=9191:keyFile={source.name}")
        self.assertEqual(endpoint._auth.proof(Role.SERVER, 3, 4), KEY.proof(Role.SERVER, 3, 4))
        self.assertEqual(endpoint._auth_timeout, DEFAULT_TIMEOUT)

    def test_noKey(self) -> None:
        """
        Without either, no authentication.
        """
        self.assertIsNone(serverFromString(reactor, "faketcp:9191")._auth)
        self.assertIsNone(clientFromString(reactor, "faketcp:host=198.18.0.2:port=9191")._auth)

    def test_errors(self) -> None:
        """
        Both arguments, an empty key, a bad timeout: ValueError at parsing.
        """
        self.assertRaises(ValueError, serverFromString, reactor, "faketcp:9191:key=a:keyFile=/etc/hostname")
        self.assertRaises(ValueError, clientFromString, reactor, "faketcp:host=198.18.0.2:port=9:key=")
        self.assertRaises(ValueError, serverFromString, reactor, "faketcp:9191:key=a:authTimeout=0")

    def test_redact(self) -> None:
        """
        L{redact} hides key values, escaped colons and all, and nothing else.
        """
        self.assertEqual(
            redact(r"faketcp:host=2001\:db8\:\:7:port=9191:key=s3\:cr\\et:keyFile=/etc/k:timeout=3"),
            r"faketcp:host=2001\:db8\:\:7:port=9191:key=***:keyFile=/etc/k:timeout=3",
        )
        self.assertEqual(redact("faketcp:9191"), "faketcp:9191")
