# -*- test-case-name: tests.test_auth -*-
"""
Optional authentication of fake-TCP connections with a pre-shared key.

Without a key nothing here runs and the wire stays tcpraw-compatible.  With
one, each side of a new connection proves it knows the key before the
application sees the connection, and the proof of one connection is worth
nothing on another.

Proofs::

    client proof = HMAC-SHA256(K, "faketcp_twisted auth v1 client proof" || ISNc || ISNs)
    server proof = HMAC-SHA256(K, "faketcp_twisted auth v1 server proof" || ISNc || ISNs)

where C{K} is the key stretched with PBKDF2-HMAC-SHA256 (see L{AuthKey}),
and C{ISNc}, C{ISNs} are the client's and the server's initial sequence
numbers of the kernel's handshake, 32 bits each, big-endian.  Each proof
travels as one ordinary data segment: a 32-byte payload, no header, no
marker.  The role label keeps a proof from being reflected back to its
sender as the other side's.

The initial sequence numbers are the connection's nonces: each kernel
chooses its own afresh for every connection (Linux: a keyed hash of the
4-tuple plus a clock), so an attacker who replays a captured proof on a
connection of his own would need the server's kernel to pick the very
same number again (odds 2**-32 per attempt, each attempt a full
handshake).  The addresses and ports are deliberately left out: NAT
rewrites the client's address and port and port forwarding the server's,
so a proof bound to them would fail on exactly the paths fake-TCP is used
on.  A middlebox that rewrites sequence numbers (some firewalls' "ISN
randomisation") makes the two sides see different numbers, and
authentication then fails.

Message flow (both sides learn the numbers from the handshake)::

    client                                   server
      | -- client proof -------------------->  |  valid: accept, answer
      |  <-------------------- server proof -- |  anything else: refuse (RST)
      | (resent at 0, 0.2, 0.6, 1.4, 2.4 ... s |
      |  until the server proof arrives)       |  every later copy of the
      |                                        |  client proof is answered
      |                                        |  again (at most answerLimit)

The server's application sees the connection once a valid client proof
arrived; the client's once the server's proof did.  A legitimate client
sends no data before its proof, so a server refuses a connection whose
first payload is anything but the expected proof.  A client may see the
server's first data before the server's proof (the proof was lost or
overtaken): it holds that data, within L{Authenticator.heldLimit} and
L{Authenticator.heldBytesLimit}, and delivers it after the proof.  Either
side refuses a connection whose proof has not arrived by the deadline.

Nothing here touches a socket or a clock: an L{Authenticator} is fed
payloads and the time, and hands back payloads to send and a verdict.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import os
import struct
from collections import OrderedDict

from .table import Role

#: Bytes of a proof: one SHA-256 output.
PROOF_SIZE = 32
#: Seconds after adoption by which the peer's proof must have arrived.
DEFAULT_TIMEOUT = 5.0
#: PBKDF2 iterations stretching the key (OWASP's 2023 figure for
#: PBKDF2-HMAC-SHA256): a captured proof lets an on-path observer test
#: guesses of the key offline, and each guess should cost that much.
KDF_ITERATIONS = 600_000
#: The PBKDF2 salt: fixed, since both sides must derive the same key from
#: the secret alone; it separates this use of a secret from any other.
KDF_SALT = b"faketcp_twisted auth v1 key"

_LABELS = {
    Role.CLIENT: b"faketcp_twisted auth v1 client proof",
    Role.SERVER: b"faketcp_twisted auth v1 server proof",
}
_ISNS = struct.Struct("!II")
_WHITESPACE = b" \t\r\n"


@functools.lru_cache(maxsize=16)
def _stretch(secret: bytes) -> bytes:
    # Cached: stretching takes a noticeable fraction of a second, and a
    # program makes many endpoints from one key.
    return hashlib.pbkdf2_hmac("sha256", secret, KDF_SALT, KDF_ITERATIONS)


class AuthKey:
    """
    A pre-shared key, stretched and ready to make proofs.

    Its C{repr} never shows the key.
    """

    __slots__ = ("_key",)

    def __init__(self, secret: bytes) -> None:
        """
        @param secret: the shared secret, at least one byte.
        @raise ValueError: C{secret} is empty.
        """
        if not secret:
            raise ValueError("a fake-TCP key must not be empty")
        self._key = _stretch(bytes(secret))

    @classmethod
    def from_text(cls, text: str | bytes) -> AuthKey:
        """
        The key of a string (its UTF-8 bytes) or of bytes as they are.
        """
        return cls(text.encode("utf-8") if isinstance(text, str) else text)

    @classmethod
    def from_file(cls, path: str) -> AuthKey:
        """
        The key held in a file: its bytes, without surrounding whitespace
        (so the newline an editor or C{echo} adds does not count).

        @raise ValueError: the file cannot be read, or holds no key.
        """
        try:
            with open(path, "rb") as source:
                secret = source.read().strip(_WHITESPACE)
        except OSError as failure:
            raise ValueError(f"cannot read the fake-TCP key file {path!r}: {failure.strerror}") from failure
        if not secret:
            raise ValueError(f"the fake-TCP key file {path!r} is empty")
        return cls(secret)

    def proof(self, role: Role, client_isn: int, server_isn: int) -> bytes:
        """
        The proof C{role} sends on the connection with these initial
        sequence numbers.
        """
        message = _LABELS[role] + _ISNS.pack(client_isn & 0xFFFFFFFF, server_isn & 0xFFFFFFFF)
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "<AuthKey (hidden)>"


def auth_key(key: str | bytes | None = None, key_file: str | None = None) -> AuthKey | None:
    """
    The key named by the C{key} and C{keyFile} arguments of an endpoint (or
    C{key} and C{key_file} of the asyncio face), or L{None} for neither.

    @raise ValueError: both are given, or the key is empty or unreadable.
    """
    if key is not None and key_file is not None:
        raise ValueError("give a fake-TCP key or a key file, not both")
    if key_file is not None:
        return AuthKey.from_file(os.fspath(key_file))
    if key is not None:
        return AuthKey.from_text(key)
    return None


class AuthState(enum.Enum):
    """
    Where authentication of one connection stands.
    """

    PENDING = "pending"
    ACCEPTED = "accepted"
    REFUSED = "refused"


class Refusal(enum.Enum):
    """
    Why a connection was refused; the value is its counter name.
    """

    #: A payload of a proof's size that is not the expected proof: a wrong
    #: key, or a proof replayed from another connection.
    BAD_PROOF = "auth-bad-proof"
    #: A first payload that is not even proof-sized: a peer without a key.
    UNEXPECTED_DATA = "auth-unexpected-data"
    #: No proof by the deadline.
    TIMEOUT = "auth-timeout"
    #: The connection ended (peer RST or FIN, local shutdown) first.
    CLOSED = "auth-closed"


class Authenticator:
    """
    The authentication of one connection, sans-IO.

    Feed it every payload the flow delivers with L{receive} and call
    L{poll} at L{next_wakeup}; send what it leaves in L{outgoing} (as data
    segments of the flow, in order) and clear it.

    @ivar role: which side this is.
    @ivar state: L{AuthState.PENDING} until the peer's proof arrives
        (C{ACCEPTED}) or it is refused (C{REFUSED}).
    @ivar refusal: why it was refused.
    @ivar deadline: when a pending authentication is refused.
    @ivar outgoing: payloads to send.
    @ivar held: a client's payloads that came before the server's proof.
    @ivar held_dropped: payloads not held because the hold was full.
    @ivar answers: proofs a server sent (its first answer and repeats).
    @ivar proofs_sent: proofs a client sent (its first and resends).
    """

    #: Seconds after the start at which a client first resends its proof;
    #: each later interval doubles, up to L{resendMaximum}.
    resendFirst = 0.2
    #: The longest interval between two resends of a client's proof.
    resendMaximum = 1.0
    #: Most payloads a client holds while waiting for the server's proof.
    heldLimit = 64
    #: Most payload bytes a client holds while waiting.
    heldBytesLimit = 256 * 1024
    #: Most proofs a server sends on one connection.  A client resends its
    #: proof a handful of times before the deadline, so a server answering
    #: each copy stays well inside; past it, copies (replayed by someone on
    #: the path, say) are swallowed unanswered.
    answerLimit = 32

    def __init__(
        self,
        key: AuthKey,
        role: Role,
        local_isn: int,
        remote_isn: int,
        now: float,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """
        @param local_isn: this side's initial sequence number.
        @param remote_isn: the peer's initial sequence number.
        @param now: the time of adoption; the deadline runs from it.
        @param timeout: seconds the peer's proof may take.
        """
        if role is Role.CLIENT:
            client_isn, server_isn, peer = local_isn, remote_isn, Role.SERVER
        else:
            client_isn, server_isn, peer = remote_isn, local_isn, Role.CLIENT
        self.role = role
        self._mine = key.proof(role, client_isn, server_isn)
        self._theirs = key.proof(peer, client_isn, server_isn)
        self.state = AuthState.PENDING
        self.refusal: Refusal | None = None
        self.deadline = now + timeout
        self.outgoing: list[bytes] = []
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.held_dropped = 0
        self.answers = 0
        self.proofs_sent = 0
        self._next_send: float | None = None
        self._interval = self.resendFirst
        if role is Role.CLIENT:
            self._sendProof()
            self._next_send = now + self._interval

    @property
    def next_wakeup(self) -> float | None:
        """
        When L{poll} has something to do (a resend, the deadline), or
        L{None} once authentication is over.
        """
        if self.state is not AuthState.PENDING:
            return None
        if self._next_send is None:
            return self.deadline
        return min(self.deadline, self._next_send)

    def _sendProof(self) -> None:
        self.outgoing.append(self._mine)
        if self.role is Role.CLIENT:
            self.proofs_sent += 1
        else:
            self.answers += 1

    def _isPeerProof(self, payload: bytes) -> bool:
        return len(payload) == PROOF_SIZE and hmac.compare_digest(payload, self._theirs)

    def receive(self, payload: bytes, now: float) -> bool:
        """
        Take one payload the flow delivered.

        @return: whether authentication consumed it: everything before
            acceptance (held, or the proof itself, or the reason for a
            refusal), and afterwards repeated copies of the peer's proof.
            A payload it did not consume is the application's.
        """
        state = self.state
        if state is AuthState.ACCEPTED:
            if len(payload) != PROOF_SIZE or not self._isPeerProof(payload):
                return False
            # The peer resent its proof: ours was lost, or is still on its
            # way.  A server answers again; a client has nothing to say.
            if self.role is Role.SERVER and self.answers < self.answerLimit:
                self._sendProof()
            return True
        if state is AuthState.REFUSED:
            return True
        if self._isPeerProof(payload):
            self.state = AuthState.ACCEPTED
            self._next_send = None
            if self.role is Role.SERVER:
                self._sendProof()
            return True
        if self.role is Role.SERVER:
            # A client with the key sends nothing before its proof.
            self.refuse(Refusal.BAD_PROOF if len(payload) == PROOF_SIZE else Refusal.UNEXPECTED_DATA)
            return True
        # The server's first data overtook its proof (or the proof was
        # lost and comes again in answer to a resend).
        if len(self.held) < self.heldLimit and self.held_bytes + len(payload) <= self.heldBytesLimit:
            self.held.append(payload)
            self.held_bytes += len(payload)
        else:
            self.held_dropped += 1
        return True

    def poll(self, now: float) -> None:
        """
        Resend a client's proof when due; refuse at the deadline.
        """
        if self.state is not AuthState.PENDING:
            return
        if now >= self.deadline:
            self.refuse(Refusal.TIMEOUT)
            return
        if self._next_send is not None and now >= self._next_send:
            self._sendProof()
            self._interval = min(self._interval * 2, self.resendMaximum)
            self._next_send = now + self._interval

    def refuse(self, refusal: Refusal) -> None:
        """
        End a pending authentication as refused (a no-op once it is over).
        """
        if self.state is not AuthState.PENDING:
            return
        self.state = AuthState.REFUSED
        self.refusal = refusal
        self._next_send = None
        self.held.clear()
        self.held_bytes = 0

    def take_held(self) -> list[bytes]:
        """
        The payloads held before acceptance, in arrival order, once.
        """
        held, self.held = self.held, []
        self.held_bytes = 0
        return held


class RefusalLog:
    """
    Decides which refusals are logged: the first of each peer address, then
    none of that address for L{interval} seconds, so a flood of refused
    connections costs a counter each, not a log line each.  At most
    L{limit} addresses are remembered (the oldest are forgotten first).
    """

    interval = 60.0
    limit = 4096

    def __init__(self) -> None:
        self._last: OrderedDict[str, float] = OrderedDict()

    def should_log(self, address: str, now: float) -> bool:
        """
        Whether a refusal of C{address} at C{now} is to be logged.
        """
        last = self._last
        seen = last.get(address)
        if seen is not None and 0.0 <= now - seen < self.interval:
            return False
        last.pop(address, None)
        while len(last) >= self.limit:
            last.popitem(last=False)
        last[address] = now
        return True


#: The process's refusal log, shared by every listener.
refusal_log = RefusalLog()
