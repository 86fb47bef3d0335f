# -*- test-case-name: tests.test_integration -*-
"""
The face-neutral half of a connection: one flow of a shared capture, its
silenced kernel socket, and what each segment means for the application.

A L{FlowConnection} works for its demultiplexer through the
L{Connection} contract and asks it for what L{Demux} declares.  A face
(Twisted's transport, asyncio's) holds the connection, drives it through
its public methods, and is told of its events as a L{Face}: a datagram to
deliver, the peer's FIN, the end (and why), the shared send backlog's
congestion.

With a pre-shared key, a connection passes an authentication stage
(L{FlowConnection.authenticate}, see L{auth}) between adoption and its
face: the connection's owner (listener, connector) binds a face only once
the peer proved it knows the key, and nothing the peer sent is delivered
before.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable

from ..core.auth import Authenticator, AuthState, Refusal, refusal_log
from ..core.flow import EndReason, Flow, FlowState
from ..core.segment import Segment
from ..core.table import Role
from .contracts import Demux, Ending, Face
from .loop import EventLoop, Timer
from .options import FlowOptions

__all__ = ["Ending", "FlowConnection", "text_address"]

log = logging.getLogger(__name__)

#: What a refusal means, for the log line.
_REFUSAL_WORDS = {
    Refusal.BAD_PROOF: "wrong key, or a proof replayed from another connection",
    Refusal.UNEXPECTED_DATA: "data before any proof (a peer without the key)",
    Refusal.TIMEOUT: "no proof in time",
    Refusal.CLOSED: "closed before proving the key",
}


#: The log lines of a refusal, and of a refused peer given to the fallback.
_REFUSED = "refused fake-TCP connection from %s port %d: %s (%s)"
_HANDED = "handed fake-TCP connection from %s port %d to the fallback service: %s (%s)"


def text_address(packed: bytes, port: int) -> tuple[str, int]:
    """
    A (host, port) pair in text from a packed address.
    """
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, packed), port


class FlowConnection:
    """
    One connection over a shared capture: a L{Connection} for its
    demultiplexer, held by a face that it tells of its events (L{bind}).

    @ivar demux: the demultiplexer of the flow's capture.
    @ivar loop: the event loop the capture is read on.
    @ivar flow: the flow's sans-IO state.
    @ivar socket: the silenced kernel socket, kept open until time-wait ends.
    @ivar early: data segments that arrived before adoption, for
        L{start} to deliver once the face is bound (an empty tuple once
        there are none, rather than a list per connection).
    @ivar on_socket_closed: called once the kernel socket is closed.
    @ivar ended: whether the connection is over.
    @ivar delivery_paused: whether datagrams are queued rather than
        delivered (L{pause_delivery}); the peer's FIN or RST is then held
        too, until the datagrams before it are delivered.
    @ivar auth: the connection's authentication, when its port or
        connector has a key; it stays after acceptance to answer (server)
        or swallow (client) repeated proofs.
    @ivar quiet: whether nothing but a refusal's RST may go to the peer:
        a keyed server's connection until its client proved the key, so
        that a prober learns nothing, and the connection can still go back
        to the kernel with no segment of ours in its sequence space (see
        L{hand_off}).
    """

    # One per flow, 10,000 flows in a relay: no per-instance dictionary.
    __slots__ = (
        "demux",
        "loop",
        "flow",
        "socket",
        "early",
        "on_socket_closed",
        "ended",
        "delivery_paused",
        "auth",
        "quiet",
        "_destination",
        "_face",
        "_paused_queue",
        "_end_held",
        "_held_rst",
        "_auth_done",
        "_auth_timer",
        "_hand_off",
    )

    #: Most datagrams queued while the face paused delivery; past it,
    #: further datagrams are dropped (as a full UDP buffer would).
    pausedQueueLimit = 1024

    def __init__(self, demux: Demux, flow: Flow, kernel_socket: socket.socket) -> None:
        self.demux = demux
        self.loop: EventLoop = demux.loop
        self.flow = flow
        self.socket = kernel_socket
        self._destination = demux.sockaddr(flow.key.remote_addr)
        self.early: list[Segment] | tuple[()] = ()
        self.on_socket_closed: Callable[[], None] | None = None
        self.ended = False
        self.delivery_paused = False
        self._face: Face | None = None
        # An empty tuple until delivery is paused with data coming: an
        # empty deque per connection would cost 760 bytes, an eighth of an
        # idle relay flow, for a queue most connections never use.
        self._paused_queue: deque[bytes] | tuple[()] = ()
        # The peer's FIN or RST arrived while delivery was paused: the face
        # hears of it once what came before it is delivered.
        self._end_held = False
        # The RST of an abort by the application, sent when the connection
        # ends (see abort_soon).
        self._held_rst: bytes | None = None
        self.auth: Authenticator | None = None
        self._auth_done: Callable[[FlowConnection, bool], None] | None = None
        self._auth_timer: Timer | None = None
        self._hand_off: Callable[[FlowConnection, Refusal], bool] | None = None
        self.quiet = False

    def bind(self, face: Face) -> None:
        """
        Tell C{face} of this connection's events from now on: the face
        that serves the application (the listener's or connector's
        callback makes it).  L{start} then delivers what arrived early.
        """
        self._face = face

    @property
    def options(self) -> FlowOptions:
        """
        The tunables of the capture's flows.
        """
        return self.demux.options

    @property
    def congested(self) -> bool:
        """
        Whether the capture's shared send backlog is past its high-water
        mark (streaming writers should pause).
        """
        return self.demux.congested

    @property
    def backlog_bytes(self) -> int:
        """
        Bytes of the capture's packets waiting for room in the kernel's
        send buffer (the asyncio face's write buffer).
        """
        return self.demux.backlog_bytes

    @property
    def local_address(self) -> tuple[str, int]:
        """
        This side's (host, port) in text.  Made on each use, not kept: it
        is wanted for logs and addresses, not per packet, and the two pairs
        kept cost an idle flow 230 bytes.
        """
        key = self.flow.key
        return text_address(key.local_addr, key.local_port)

    @property
    def remote_address(self) -> tuple[str, int]:
        """
        The peer's (host, port) in text, made on each use (see
        L{local_address}).
        """
        key = self.flow.key
        return text_address(key.remote_addr, key.remote_port)

    # -- Connection: called by the demultiplexer -------------------------

    def segment_received(self, segment: Segment, now: float) -> None:
        """
        Take one segment of this connection's flow.
        """
        flow = self.flow
        before = flow.state
        payload = flow.receive(segment, now)
        if flow.pending:
            self.flush_pending()
        if payload:
            auth = self.auth
            if auth is not None and auth.receive(payload, now):
                self._authProgress(now)
            elif self.delivery_paused:
                queue = self._paused_queue
                if len(queue) >= self.pausedQueueLimit:
                    self.demux.count_drop("paused-overflow")
                else:
                    if not queue:
                        queue = self._paused_queue = deque()
                    queue.append(payload)
            else:
                face = self._face
                if face is not None:
                    face.deliver(payload)
        # Only a change of state means anything: a refused RST or a copy of
        # a FIN already taken must not close (or half-close) twice.
        if flow.state is not before and not self.ended:
            if self.delivery_paused:
                # As over kernel TCP, where a paused transport reads nothing:
                # the FIN or RST is heard after the data that came before it,
                # once delivery resumes (or, a RST, when the application
                # writes: see _sendRefused).
                self._end_held = True
            else:
                self._flowStateChanged()

    def _flowStateChanged(self) -> None:
        flow = self.flow
        if self._auth_done is not None:
            # Ended or half-closed before proving the key: nobody was told
            # of this connection, so nobody is told of its end.
            if flow.state is FlowState.CLOSED:
                self.end(Ending.RESET if flow.end_reason is EndReason.PEER_RST else Ending.DONE)
            else:
                self._authFailed(Refusal.CLOSED)
            return
        if flow.end_reason is EndReason.PEER_RST:
            self.end(Ending.RESET)
        elif flow.state is FlowState.READ_CLOSED:
            face = self._face
            if face is not None:
                face.peer_finished()
        elif flow.state is FlowState.CLOSED:
            # Closed by this side's own RST (an abort from inside the
            # application's callback, before its end_soon ran): aborted,
            # not closed cleanly.
            self.end(Ending.ABORTED if flow.end_reason is EndReason.LOCAL_RST else Ending.DONE)

    def _deliver(self, payload: bytes) -> None:
        # (No face yet: only between adoption and the owner's callback,
        # which binds one before the loop turns.)
        face = self._face
        if face is not None:
            face.deliver(payload)

    def expired(self) -> None:
        """
        The flow was idle for too long.
        """
        self.end(Ending.TIMEOUT)

    def capture_closed(self) -> None:
        """
        The capture is closing under this connection: reset the peer (or it
        would wait for its idle timeout) and end.
        """
        if not self.ended and self.flow.state is not FlowState.CLOSED:
            self.send_packet(self.flow.reset(self.loop.seconds()))
        self.end(Ending.CAPTURE_CLOSED)

    def flush_pending(self) -> None:
        """
        Send the packets the flow queued (ACKs, keepalives, challenge ACKs).
        """
        pending = self.flow.pending
        if not self.quiet:
            for packet in pending:
                self.send_packet(packet)
        pending.clear()

    def congestion_changed(self, congested: bool) -> None:
        """
        The shared send backlog crossed its high-water mark, or drained.
        """
        face = self._face
        if face is not None and not self.ended:
            face.congestion_changed(congested)

    def abort(self) -> None:
        """
        Reset the peer and end (a port shutting down resets its
        connections: their peers learn at once).
        """
        self.send_rst()
        self.end(Ending.ABORTED)

    # -- used by the faces -----------------------------------------------

    def start(self) -> None:
        """
        The face is bound: send what the flow holds, deliver the segments
        that arrived before adoption (or, after authentication, what was
        held while waiting for the peer's proof, then the early segments
        authentication did not need).
        """
        self.flush_pending()
        if self.auth is not None:
            for payload in self.auth.take_held():
                if self.ended:
                    return
                self._deliver(payload)
        early, self.early = self.early, ()
        now = self.loop.seconds()
        for segment in early:
            if self.ended:
                break
            self.segment_received(segment, now)

    def send_packet(self, packet: bytes) -> None:
        """
        Send one built packet to the peer.
        """
        self.demux.transmit(packet, self._destination)

    def send(self, data: bytes) -> None:
        """
        Send C{data} as one datagram per MSS-sized piece.
        """
        flow = self.flow
        if self.ended or not flow.can_send or not data:
            if data:
                self._sendRefused()
            return
        now = self.loop.seconds()
        mss = flow.mss
        if len(data) <= mss:
            self.demux.transmit(flow.send(data, now), self._destination)
            return
        view = memoryview(data)
        for start in range(0, len(data), mss):
            self.demux.transmit(flow.send(bytes(view[start : start + mss]), now), self._destination)

    def send_datagrams(self, datagrams: list[bytes]) -> None:
        """
        Send each of C{datagrams} as one segment, as L{send} does for one
        that fits the MSS, with the per-call work done once for the batch
        (the relay's path: it drops what does not fit beforehand).

        @raise ValueError: for a datagram larger than the MSS (those before
            it were sent).
        """
        flow = self.flow
        if self.ended or not flow.can_send:
            self._sendRefused()
            return
        now = self.loop.seconds()
        build = flow.send
        transmit = self.demux.transmit
        destination = self._destination
        for datagram in datagrams:
            if datagram:
                transmit(build(datagram, now), destination)

    def _sendRefused(self) -> None:
        # Over kernel TCP a write to a reset socket fails, and the transport
        # reports the reset on the next turn, reading or not: so does a
        # write after a RST held while delivery is paused.
        if self._end_held and not self.ended and self.flow.end_reason is EndReason.PEER_RST:
            self._end_held = False
            self.end_soon(Ending.RESET)

    def send_fin(self) -> bool:
        """
        Close the sending half with FIN.

        @return: whether the flow is now closed both ways.
        """
        if self.flow.can_send:
            self.send_packet(self.flow.finish(self.loop.seconds()))
        return self.flow.state is FlowState.CLOSED

    def send_rst(self) -> None:
        """
        Abort the flow with RST.
        """
        if self.flow.state is not FlowState.CLOSED:
            self.send_packet(self.flow.reset(self.loop.seconds()))

    def abort_soon(self) -> None:
        """
        Abort for the application: reset the flow now (nothing more is
        sent or delivered) and end on the next turn of the loop, sending
        the RST then.  A transport over kernel TCP (Twisted's, asyncio's)
        sends its RST when it closes the socket, as the connection is
        lost: the peer never learns of the abort before this side's
        application does.
        """
        flow = self.flow
        if not self.ended and flow.state is not FlowState.CLOSED:
            self._held_rst = flow.reset(self.loop.seconds())
        self.end_soon(Ending.ABORTED)

    def end_soon(self, ending: Ending) -> None:
        """
        End on the next turn of the loop (a close called from inside the
        application's own callback must not re-enter it).
        """
        self.loop.call_later(0, self.end, ending)

    def end(self, ending: Ending, failure: object = None) -> None:
        """
        End the connection once: send the RST of an L{abort_soon}, release
        the flow and tell the face.
        """
        if self.ended:
            return
        self.ended = True
        held, self._held_rst = self._held_rst, None
        if held is not None:
            self.send_packet(held)
        flow = self.flow
        if flow.state is not FlowState.CLOSED:
            flow.abandon()
        self._paused_queue = ()
        self._end_held = False
        self.demux.detach(self)
        if self._auth_done is not None:
            # Still authenticating: the face never saw this connection;
            # its owner (listener, connector) hears of the failure instead.
            self._authOver(Refusal.CLOSED)
            return
        face = self._face
        if face is not None:
            face.connection_ended(ending, failure)

    def pause_delivery(self) -> None:
        """
        Queue this connection's datagrams instead of delivering them (the
        capture is shared: it cannot stop reading for one connection); a
        FIN or RST from the peer waits behind them.
        """
        self.delivery_paused = True

    def resume_delivery(self) -> None:
        """
        Deliver what was queued, then the peer's FIN or RST if one came
        meanwhile, then go on delivering.
        """
        self.delivery_paused = False
        queue = self._paused_queue
        while queue and not self.delivery_paused and not self.ended:
            self._deliver(queue.popleft())
        # (The attribute, not the local: a delivery may have paused and
        # resumed again, or ended the connection.)
        if not self._paused_queue:
            self._paused_queue = ()
        if self._end_held and not self.delivery_paused and not self.ended:
            self._end_held = False
            self._flowStateChanged()

    def refuse(self) -> None:
        """
        Reset a flow that no application was found for.
        """
        self.send_rst()
        self.ended = True
        self.demux.detach(self)

    def hand_off(self) -> socket.socket:
        """
        End the connection without a word to the peer and give its kernel
        socket, still silenced, to the caller: the kernel takes the
        connection back from the numbers of its handshake.  Only sound for
        a L{quiet} connection: nothing of ours is in the peer's sequence
        space, and nothing the peer sent was acknowledged.
        """
        self.ended = True
        self._paused_queue = ()
        self.early = ()
        flow = self.flow
        if flow.state is not FlowState.CLOSED:
            flow.abandon()
        return self.demux.hand_off(self)

    # -- authentication --------------------------------------------------

    def authenticate(
        self,
        authenticator: Authenticator,
        done: Callable[[FlowConnection, bool], None],
        hand_off: Callable[[FlowConnection, Refusal], bool] | None = None,
    ) -> None:
        """
        Hold the connection until the peer proves it knows the key.

        Runs the segments that arrived before adoption through
        C{authenticator}, sends this side's proof (a client) and arms the
        timer of resends and deadline.  C{done(self, True)} is called once
        the peer's proof arrived (the owner then attaches the application,
        whose L{start} delivers what was held), or C{done(self, False)}
        once the connection was refused (reset, counted, and logged at
        most once a minute per peer address) or ended.  C{done} may be
        called before this returns.

        @param hand_off: called instead of the refusal's reset, for a peer
            that did not prove the key but is still there; returns whether
            it took the connection (L{hand_off}).
        """
        self.auth = authenticator
        self._auth_done = done
        self._hand_off = hand_off
        # The window announcement adoption queued goes out first.
        self.flush_pending()
        now = self.loop.seconds()
        self._authProgress(now)
        # Taken one at a time from the list itself: when a segment accepts
        # (a client: the server's proof, then its first data), the owner
        # attaches the application within that call, and start() delivers
        # the rest of this very list.
        early = self.early
        while early and self._auth_done is not None and not self.ended:
            self.segment_received(early.pop(0), now)
        if self._auth_done is not None and not self.ended:
            self._armAuthTimer(now)

    def _armAuthTimer(self, now: float) -> None:
        auth = self.auth
        wakeup = auth.next_wakeup if auth is not None else None
        if wakeup is not None:
            self._auth_timer = self.loop.call_later(max(wakeup - now, 0.0), self._authTick)

    def _authTick(self) -> None:
        self._auth_timer = None
        auth = self.auth
        if auth is None or self._auth_done is None or self.ended:
            return
        now = self.loop.seconds()
        auth.poll(now)
        self._authProgress(now)
        if self._auth_done is not None and not self.ended:
            self._armAuthTimer(now)

    def _authProgress(self, now: float) -> None:
        """
        Send what authentication wants sent; act on its verdict.
        """
        auth = self.auth
        assert auth is not None
        if auth.state is AuthState.ACCEPTED:
            # The peer proved the key: this side may speak (its proof first).
            self.quiet = False
        if auth.outgoing:
            for payload in auth.outgoing:
                self.send(payload)
            auth.outgoing.clear()
        if self._auth_done is None:
            return
        if auth.state is AuthState.ACCEPTED:
            self._authOver(None)
        elif auth.state is AuthState.REFUSED:
            self._authFailed(auth.refusal or Refusal.BAD_PROOF)

    def _authFailed(self, refusal: Refusal) -> None:
        """
        Refuse the connection: reset it, count, log (rate-limited), tell
        the owner.
        """
        if self._auth_done is None:
            return
        hand_off, self._hand_off = self._hand_off, None
        handed = not self.ended and hand_off is not None and hand_off(self, refusal)
        host, port = self.remote_address
        if self.demux.role is Role.SERVER and refusal_log.should_log(host, self.loop.seconds()):
            log.warning(
                (_HANDED if handed else _REFUSED) + "; further refusals of %s are counted, not logged, for %g s",
                host,
                port,
                _REFUSAL_WORDS[refusal],
                refusal.value,
                host,
                refusal_log.interval,
            )
        if not self.ended:
            self.quiet = False
            self.send_rst()
            self.ended = True
            self._paused_queue = ()
            self.demux.detach(self)
        self._authOver(refusal)

    def _authOver(self, refusal: Refusal | None) -> None:
        """
        Authentication is over, accepted (C{refusal} is L{None}) or not:
        stop its timer, count a refusal, tell the owner once.
        """
        done, self._auth_done = self._auth_done, None
        timer, self._auth_timer = self._auth_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if done is None:
            return
        auth = self.auth
        if refusal is not None:
            if auth is not None:
                auth.refuse(refusal)
            self.early = ()
            self.demux.count_drop(refusal.value)
        if auth is not None and auth.held_dropped:
            self.demux.count_drop("auth-held-overflow", auth.held_dropped)
        done(self, refusal is None)

    def cancel_authentication(self) -> None:
        """
        Give up a pending authentication without telling the owner (which
        is the one giving up): reset the connection and release it.
        """
        if self._auth_done is None:
            return
        self._auth_done = None
        timer, self._auth_timer = self._auth_timer, None
        if timer is not None and timer.active():
            timer.cancel()
        if not self.ended:
            self.refuse()

    @property
    def authenticating(self) -> bool:
        """
        Whether the connection waits for the peer's proof.
        """
        return self._auth_done is not None
