# -*- test-case-name: tests.test_integration,tests.test_relay_tap,tests.test_hardening,tests.test_nftables -*-
"""
The silencing rules: one rule per listening port or per remote destination,
that drops every non-SYN segment of the kernel's marked sockets.

Two backends hold them:

  - C{nftables}: one table per process and network namespace, owned by
    the netlink socket that made it (L{faketcp_twisted.io.nftables}): the
    kernel deletes it when the process ends, however it ends.  Needs
    nf_tables and Linux 5.12.
  - C{iptables}: python-iptables on the legacy tables, one rule per user.
    Each rule carries a comment naming the owning process and its start
    time, so that a later start recognises and sweeps the rules of a
    process that was killed before it could remove them.

C{auto} takes nftables where the kernel can, else iptables.  Either way
rules are shared and reference-counted within the process, and removed when
their last user goes.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from dataclasses import dataclass
from typing import Any

from .netns import InNamespace, netns_id, open_current

COMMENT_PREFIX = "faketcp_twisted"
#: The default firewall mark of kernel sockets ("FT" in its top bytes).
DEFAULT_MARK = 0x46540000

_OWNER = re.compile(COMMENT_PREFIX + r" pid=(\d+) start=(\d+)")


#: The backends a port or connection may ask for (see the module docstring).
BACKENDS = ("auto", "nftables", "iptables")


class FirewallUnavailable(RuntimeError):
    """
    The rules cannot be installed: the backend asked for (or, for C{auto},
    both) is missing, with a one-line reason and its fix.
    """


@dataclass(frozen=True, slots=True)
class SilenceRule:
    """
    One silencing rule.

    @ivar family: C{AF_INET} or C{AF_INET6}.
    @ivar port: the local listening port (C{remote} is L{None}) or the
        remote port of a destination.
    @ivar remote: the remote address (text) for a client's rule.
    @ivar mark: the firewall mark of the kernel sockets it silences.
    """

    family: int
    port: int
    remote: str | None = None
    mark: int = DEFAULT_MARK

    def describe(self, comment: str | None = None) -> str:
        """
        The rule as an iptables (ip6tables) command.

        @param comment: the rule's comment; by default the one this process
            would give it.  An operator installing rules by hand must use
            another comment: rules with this process's comment are swept as
            leftovers once it has exited.
        """
        command = "ip6tables" if self.family == socket.AF_INET6 else "iptables"
        if self.remote is None:
            where = f"--sport {self.port}"
        else:
            host = "/128" if self.family == socket.AF_INET6 else "/32"
            where = f"-d {self.remote}{host} --dport {self.port}"
        return (
            f"{command} -A OUTPUT -p tcp {where} ! --tcp-flags SYN SYN "
            f"-m mark --mark {self.mark:#x} -m comment --comment "
            f'"{_comment() if comment is None else comment}" -j DROP'
        )


def _process_start(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    # Field 22 of stat (starttime); the split above dropped fields 1 and 2.
    return int(fields[19])


def _comment(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{COMMENT_PREFIX} pid={pid} start={_process_start(pid) or 0}"


def _iptc() -> Any:
    try:
        import iptc
    except Exception as error:  # a missing libxtables raises from ctypes
        raise FirewallUnavailable(
            f"python-iptables cannot load the iptables libraries ({error}); "
            "install Debian's iptables package"
        ) from error
    return iptc


def _chain(iptc: Any, family: int) -> Any:
    try:
        if family == socket.AF_INET6:
            table = iptc.Table6(iptc.Table6.FILTER, autocommit=True)
        else:
            table = iptc.Table(iptc.Table.FILTER, autocommit=True)
        table.refresh()
        return iptc.Chain(table, "OUTPUT")
    except Exception as error:
        raise FirewallUnavailable(f"cannot open the iptables filter table: {error}") from error


def _build(iptc: Any, rule: SilenceRule) -> Any:
    made = iptc.Rule6() if rule.family == socket.AF_INET6 else iptc.Rule()
    made.protocol = "tcp"
    if rule.remote is not None:
        made.dst = rule.remote
    tcp = made.create_match("tcp")
    if rule.remote is None:
        tcp.sport = str(rule.port)
    else:
        tcp.dport = str(rule.port)
    tcp.tcp_flags = ["!", "SYN", "SYN"]
    made.create_match("mark").mark = f"{rule.mark:#x}"
    made.create_match("comment").comment = _comment()
    made.target = iptc.Target(made, "DROP")
    return made


class Silencer:
    """
    The process's silencing rules, reference-counted per network namespace,
    in whichever backend each was installed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (namespace, rule) -> [users, namespace fd or -1, backend]
        self._rules: dict[tuple[int, SilenceRule], list[Any]] = {}
        # The nftables table of each namespace, while it holds rules.
        self._tables: dict[int, Any] = {}
        #: Why nftables could not be had here, once C{auto} found out.
        self.nftables_unavailable: str | None = None

    def acquire(self, rule: SilenceRule, backend: str = "auto") -> str:
        """
        Install C{rule} in the current network namespace, or count one more
        user of it (in the backend it is already in).

        @param backend: one of L{BACKENDS}.
        @return: the backend that holds the rule.
        @raise FirewallUnavailable: the rule cannot be installed.
        @raise ValueError: an unknown backend.
        """
        if backend not in BACKENDS:
            raise ValueError(f"firewall must be one of {', '.join(BACKENDS)}, not {backend!r}")
        namespace = netns_id()
        with self._lock:
            entry = self._rules.get((namespace, rule))
            if entry is not None:
                entry[0] += 1
                return str(entry[2])
            if backend != "iptables" and (backend == "nftables" or self.nftables_unavailable is None):
                try:
                    self._nftables_add(namespace, rule)
                except FirewallUnavailable as refusal:
                    if backend == "nftables":
                        raise
                    self.nftables_unavailable = str(refusal)
                else:
                    self._rules[(namespace, rule)] = [1, -1, "nftables"]
                    return "nftables"
            try:
                self._iptables_add(rule)
            except FirewallUnavailable as refusal:
                if backend == "auto" and self.nftables_unavailable is not None:
                    raise FirewallUnavailable(
                        f"no firewall to silence the kernel's sockets: nftables: {self.nftables_unavailable}; "
                        f"iptables: {refusal}"
                    ) from refusal
                raise
            fd = open_current()
            self._rules[(namespace, rule)] = [1, fd, "iptables"]
            return "iptables"

    def _nftables_add(self, namespace: int, rule: SilenceRule) -> None:
        from . import nftables

        table = self._tables.get(namespace)
        try:
            if table is None:
                table = self._tables[namespace] = nftables.OwnedTable()
            table.add(rule)
        except nftables.NftablesUnavailable as refusal:
            raise FirewallUnavailable(str(refusal)) from refusal
        except (OSError, RuntimeError, ValueError) as failure:
            raise FirewallUnavailable(f"cannot install {nftables.describe(rule)}: {failure}") from failure

    def _iptables_add(self, rule: SilenceRule) -> None:
        iptc = _iptc()
        sweep(iptc)
        chain = _chain(iptc, rule.family)
        try:
            chain.insert_rule(_build(iptc, rule))
        except Exception as error:
            raise FirewallUnavailable(
                f"cannot install {rule.describe()}: {error} (python-iptables needs Debian's iptables package "
                "and the kernel's legacy iptables support; or use firewall=nftables)"
            ) from error

    def release(self, rule: SilenceRule, namespace: int | None = None) -> None:
        """
        Drop one user of C{rule}; the last one removes it, in the namespace
        where it was installed (and a namespace's nftables table goes with
        its last rule: the table's socket would keep a deleted namespace
        alive).
        """
        namespace = netns_id() if namespace is None else namespace
        with self._lock:
            entry = self._rules.get((namespace, rule))
            if entry is None:
                return
            entry[0] -= 1
            if entry[0] > 0:
                return
            del self._rules[(namespace, rule)]
            if entry[2] == "nftables":
                table = self._tables[namespace]
                try:
                    table.remove(rule)
                finally:
                    if not table.rules():
                        del self._tables[namespace]
                        table.close()
                return
            fd = entry[1]
            try:
                with InNamespace(fd):
                    _delete_matching(_iptc(), rule.family, _comment(), rule)
            finally:
                os.close(fd)

    def release_all(self) -> None:
        """
        Remove every rule this process holds, whatever its count of users
        (the process is exiting).
        """
        with self._lock:
            entries = list(self._rules.items())
        for (namespace, rule), entry in entries:
            entry[0] = 1
            try:
                self.release(rule, namespace)
            except Exception:
                # Exiting: an iptables rule left here is swept by the next
                # start; an nftables table goes with the process anyway.
                pass

    def installed(self) -> list[SilenceRule]:
        """
        The rules this process holds, in every namespace.
        """
        with self._lock:
            return [rule for (_ns, rule) in self._rules]

    def backend_of(self, rule: SilenceRule, namespace: int | None = None) -> str | None:
        """
        The backend holding C{rule} in C{namespace} (default: the current
        one), or L{None}.
        """
        namespace = netns_id() if namespace is None else namespace
        with self._lock:
            entry = self._rules.get((namespace, rule))
            return None if entry is None else str(entry[2])


def _delete_matching(iptc: Any, family: int, comment: str, rule: SilenceRule | None) -> int:
    chain = _chain(iptc, family)
    wanted = _build(iptc, rule) if rule is not None else None
    removed = 0
    for existing in list(chain.rules):
        if wanted is not None:
            match = existing == wanted
        else:
            match = any(
                m.name == "comment" and m.comment.startswith(comment) for m in existing.matches
            )
        if match:
            chain.delete_rule(existing)
            removed += 1
    return removed


def sweep(iptc: Any | None = None) -> int:
    """
    Remove the silencing rules of processes that no longer run.

    A rule belongs to a dead process when no process has its pid, or the
    process with that pid started at another time (the pid was reused).

    @return: how many rules were removed.
    """
    iptc = iptc or _iptc()
    removed = 0
    for family in (socket.AF_INET, socket.AF_INET6):
        chain = _chain(iptc, family)
        for existing in list(chain.rules):
            for match in existing.matches:
                if match.name != "comment":
                    continue
                owner = _OWNER.match(match.comment or "")
                if owner is None:
                    continue
                pid, start = int(owner.group(1)), int(owner.group(2))
                if _process_start(pid) != start:
                    chain.delete_rule(existing)
                    removed += 1
                break
    return removed


#: The process-wide silencer that ports and connectors share.
silencer = Silencer()
