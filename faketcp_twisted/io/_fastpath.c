/*
 * The per-packet hot path of faketcp_twisted in C: the TCP checksum, a data
 * segment built from a per-flow header template, the segment parser, batch
 * receive (recvmmsg) and send (sendmmsg) on the capture's sockets, and the
 * same on the relay's UDP sockets.
 *
 * Every function has a pure-Python twin in faketcp_twisted/fastpath.py with
 * the same semantics (same results, same errors); the tests compare the two
 * on many random inputs.  faketcp_twisted.fastpath chooses between them, so
 * nothing else imports this module.
 *
 * No third-party dependencies: the CPython API and Linux's socket headers.
 * The GIL is held throughout (every call is non-blocking and short), which
 * keeps the shared receive buffers and the objects handed in safe from other
 * threads without copies.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <linux/if_packet.h>

#define IPPROTO_TCP_NUM 6

/* Most packets one recvmmsg/sendmmsg call handles.  Python loops over calls
 * for larger budgets; 64 amortises the syscall and keeps the receive buffers
 * (MAX_PACKET each, mapped but only touched as far as packets reach) small. */
#define BATCH 64
/* As capture.Capture.maxPacket: an IP packet cannot be longer. */
#define MAX_PACKET 65535

/* tpacket_auxdata.tp_status: the checksum was never computed (the packet
 * did not leave the machine), or the kernel already verified it. */
#ifndef TP_STATUS_CSUMNOTREADY
#define TP_STATUS_CSUMNOTREADY (1 << 3)
#endif
#ifndef TP_STATUS_CSUM_VALID
#define TP_STATUS_CSUM_VALID (1 << 7)
#endif
#define TRUSTED (TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID)

/* The Python types this module returns and raises, handed over once by
 * fastpath.py through configure(): segment.Segment, flow.FlowKey and
 * segment.MalformedSegment.  Returning the project's own NamedTuples keeps
 * the C and Python paths indistinguishable to callers. */
static PyTypeObject *segment_type = NULL;
static PyTypeObject *flowkey_type = NULL;
static PyObject *malformed_type = NULL;
/* One interned str per MalformedSegment reason, so counting a drop costs no
 * allocation. */
enum reason {
    R_NONE = 0,
    R_TRUNCATED,
    R_BAD_LENGTH,
    R_BAD_VERSION,
    R_FRAGMENT,
    R_NOT_TCP,
    R_IP_OPTIONS,
    R_BAD_CHECKSUM,
    R_COUNT
};
static const char *reason_text[R_COUNT] = {
    NULL, "truncated", "bad-length", "bad-version", "fragment", "not-tcp", "ip-options", "bad-checksum",
};
static PyObject *reason_str[R_COUNT];
static PyObject *empty_bytes = NULL;

/* ------------------------------------------------------------------------
 * Checksum
 *
 * The one's complement sum is independent of byte order (RFC 1071, 2.B):
 * summing native-order words and swapping the folded result gives the sum
 * of big-endian words.  Eight bytes at a time into a 64-bit accumulator, as
 * two 32-bit halves, so the accumulator cannot overflow for any packet.
 * ------------------------------------------------------------------------ */

static inline uint64_t
sum_native(const unsigned char *data, Py_ssize_t len)
{
    uint64_t acc = 0;
    uint64_t word;
    uint32_t half;
    uint16_t quarter;
    while (len >= 32) {
        uint64_t a, b, c, d;
        memcpy(&a, data, 8);
        memcpy(&b, data + 8, 8);
        memcpy(&c, data + 16, 8);
        memcpy(&d, data + 24, 8);
        acc += (a & 0xFFFFFFFFu) + (a >> 32) + (b & 0xFFFFFFFFu) + (b >> 32);
        acc += (c & 0xFFFFFFFFu) + (c >> 32) + (d & 0xFFFFFFFFu) + (d >> 32);
        data += 32;
        len -= 32;
    }
    while (len >= 8) {
        memcpy(&word, data, 8);
        acc += (word & 0xFFFFFFFFu) + (word >> 32);
        data += 8;
        len -= 8;
    }
    if (len >= 4) {
        memcpy(&half, data, 4);
        acc += half;
        data += 4;
        len -= 4;
    }
    if (len >= 2) {
        memcpy(&quarter, data, 2);
        acc += quarter;
        data += 2;
        len -= 2;
    }
    if (len) {
        /* The odd last byte is the high byte of a big-endian word padded
         * with zero: in native order, wherever that byte lands. */
        unsigned char pad[2] = {data[0], 0};
        memcpy(&quarter, pad, 2);
        acc += quarter;
    }
    return acc;
}

/* Fold a native-order accumulator to 16 bits and return the big-endian sum
 * in 0..0xffff (0xffff only for a non-zero sum congruent to 0). */
static inline uint32_t
fold_be(uint64_t acc)
{
    while (acc >> 16)
        acc = (acc & 0xFFFF) + (acc >> 16);
#if PY_LITTLE_ENDIAN
    acc = ((acc & 0xFF) << 8) | (acc >> 8);
#endif
    return (uint32_t)acc;
}

/* The sum reduced modulo 0xffff, as segment.internet_checksum_sum gives it. */
static inline uint32_t
mod_ffff(uint32_t folded)
{
    return folded == 0xFFFF ? 0 : folded;
}

/* The checksum field value for a sum, as segment.tcp_checksum computes it:
 * 0 for a sum of (either) zero, else its one's complement. */
static inline uint32_t
checksum_field(uint32_t folded)
{
    uint32_t total = mod_ffff(folded);
    return total ? 0xFFFF - total : 0;
}

/* Sum of the pseudo header of a TCP segment of `length` bytes (addresses
 * taken from an IP header of the given version), as a big-endian folded
 * value that can be added to sums of 16-bit-aligned data. */
static inline uint64_t
pseudo_native(const unsigned char *ip, int v6, uint32_t length)
{
    /* The addresses in native order, plus protocol and length as the native
     * images of their big-endian words. */
    unsigned char tail[8];
    uint64_t acc;
    if (v6) {
        acc = sum_native(ip + 8, 32);
        tail[0] = (unsigned char)(length >> 24);
        tail[1] = (unsigned char)(length >> 16);
        tail[2] = (unsigned char)(length >> 8);
        tail[3] = (unsigned char)length;
        tail[4] = tail[5] = tail[6] = 0;
        tail[7] = IPPROTO_TCP_NUM;
        acc += sum_native(tail, 8);
    }
    else {
        acc = sum_native(ip + 12, 8);
        tail[0] = 0;
        tail[1] = IPPROTO_TCP_NUM;
        tail[2] = (unsigned char)(length >> 8);
        tail[3] = (unsigned char)length;
        acc += sum_native(tail, 4);
    }
    return acc;
}

static inline uint16_t
be16(const unsigned char *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static inline uint32_t
be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void
put16(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static inline void
put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

PyDoc_STRVAR(internet_checksum_sum_doc,
"internet_checksum_sum(*parts) -> int\n\n"
"One's complement sum of 16-bit big-endian words of the parts (each taken\n"
"as if it started on a word boundary, an odd one padded with zero), reduced\n"
"modulo 0xffff: segment.internet_checksum_sum in C.");

static PyObject *
fp_internet_checksum_sum(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i < nargs; i++) {
        Py_buffer view;
        if (PyObject_GetBuffer(args[i], &view, PyBUF_SIMPLE) < 0)
            return NULL;
        total += fold_be(sum_native(view.buf, view.len));
        PyBuffer_Release(&view);
    }
    while (total >> 16)
        total = (total & 0xFFFF) + (total >> 16);
    return PyLong_FromUnsignedLong(mod_ffff((uint32_t)total));
}

/* ------------------------------------------------------------------------
 * Building
 * ------------------------------------------------------------------------ */

/* The TCP timestamps option as the Linux kernel lays it out on established
 * segments: NOP, NOP, kind 8, length 10, then TSval and TSecr (4 bytes
 * each).  A template with it is 12 bytes longer and has data offset 8. */
#define TS_OPTION_SIZE 12
static const unsigned char ts_option_head[4] = {1, 1, 8, 10};

PyDoc_STRVAR(build_segment_doc,
"build_segment(template, seq, ack, flags, payload, tsval=0, tsecr=0) -> bytes\n\n"
"A whole IP packet carrying one TCP segment: the template (from\n"
"fastpath.segment_template) with the sequence and ack numbers, flags,\n"
"lengths and TCP checksum filled in, then payload.\n\n"
"A 40-byte IPv4 or 60-byte IPv6 template has no TCP options (data offset\n"
"5).  A 52-byte IPv4 or 72-byte IPv6 one (timestamps=True) carries the\n"
"timestamps option as Linux lays it out (NOP, NOP, kind 8, length 10,\n"
"data offset 8): tsval and tsecr are written into it, big-endian.  With an\n"
"option-less template tsval and tsecr are ignored (but still range-checked),\n"
"so a caller may pass them whatever its template is.  Arguments are\n"
"positional only (5, 6 or 7 of them).  Raises ValueError for anything else\n"
"as template, or a payload too long for one IP packet; OverflowError for\n"
"seq, ack, tsval or tsecr outside 0..2**32-1 or flags outside 0..255.");

static PyObject *
fp_build_segment(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 5 || nargs > 7) {
        PyErr_SetString(PyExc_TypeError, "build_segment takes 5 to 7 arguments");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "template must be bytes");
        return NULL;
    }
    const unsigned char *template = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t header = PyBytes_GET_SIZE(args[0]);
    int v6, options;
    switch (header) {
    case 40: v6 = 0; options = 0; break;
    case 52: v6 = 0; options = TS_OPTION_SIZE; break;
    case 60: v6 = 1; options = 0; break;
    case 72: v6 = 1; options = TS_OPTION_SIZE; break;
    default: goto not_template;
    }
    /* The IP version, the TCP data offset and the option layout must be
     * what the size says. */
    const unsigned char *template_tcp = template + (v6 ? 40 : 20);
    if ((template[0] >> 4) != (v6 ? 6 : 4) || (template_tcp[12] >> 4) != 5 + options / 4
        || (options && memcmp(template_tcp + 20, ts_option_head, sizeof(ts_option_head)) != 0))
        goto not_template;
    unsigned long seq = PyLong_AsUnsignedLong(args[1]);
    if (seq == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    unsigned long ack = PyLong_AsUnsignedLong(args[2]);
    if (ack == (unsigned long)-1 && PyErr_Occurred())
        return NULL;
    long flags = PyLong_AsLong(args[3]);
    if (flags == -1 && PyErr_Occurred())
        return NULL;
    if (seq > 0xFFFFFFFFul || ack > 0xFFFFFFFFul || flags < 0 || flags > 0xFF) {
        PyErr_SetString(PyExc_OverflowError, "seq, ack or flags out of range");
        return NULL;
    }
    unsigned long tsval = 0, tsecr = 0;
    if (nargs > 5) {
        tsval = PyLong_AsUnsignedLong(args[5]);
        if (tsval == (unsigned long)-1 && PyErr_Occurred())
            return NULL;
        if (nargs > 6) {
            tsecr = PyLong_AsUnsignedLong(args[6]);
            if (tsecr == (unsigned long)-1 && PyErr_Occurred())
                return NULL;
        }
        if (tsval > 0xFFFFFFFFul || tsecr > 0xFFFFFFFFul) {
            PyErr_SetString(PyExc_OverflowError, "tsval or tsecr out of range");
            return NULL;
        }
    }
    Py_buffer payload;
    if (PyObject_GetBuffer(args[4], &payload, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t tcp_length = 20 + options + payload.len;
    /* The IPv4 total length and the IPv6 payload length are 16-bit fields. */
    if ((v6 ? tcp_length : 20 + tcp_length) > 0xFFFF) {
        PyBuffer_Release(&payload);
        PyErr_SetString(PyExc_ValueError, "payload too long for one IP packet");
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, header + payload.len);
    if (result == NULL) {
        PyBuffer_Release(&payload);
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    memcpy(out, template, header);
    memcpy(out + header, payload.buf, payload.len);
    PyBuffer_Release(&payload);
    unsigned char *tcp = out + (v6 ? 40 : 20);
    if (v6)
        put16(out + 4, (uint32_t)tcp_length);
    else
        put16(out + 2, (uint32_t)(20 + tcp_length));
    put32(tcp + 4, (uint32_t)seq);
    put32(tcp + 8, (uint32_t)ack);
    tcp[13] = (unsigned char)flags;
    tcp[16] = tcp[17] = 0;
    if (options) {
        put32(tcp + 24, (uint32_t)tsval);
        put32(tcp + 28, (uint32_t)tsecr);
    }
    uint64_t acc = pseudo_native(out, v6, (uint32_t)tcp_length) + sum_native(tcp, tcp_length);
    put16(tcp + 16, checksum_field(fold_be(acc)));
    return result;

not_template:
    PyErr_SetString(PyExc_ValueError, "not a segment template");
    return NULL;
}

/* ------------------------------------------------------------------------
 * Parsing
 * ------------------------------------------------------------------------ */

/* The last address objects made, reused while packets keep carrying the
 * same addresses (the usual case: one or few peers).  Bytes are immutable,
 * so sharing is invisible; a reused object also keeps its cached hash for
 * the flow-table lookup. */
static PyObject *last_address[2][2]; /* [is_v6][src=0, dst=1] */

static PyObject *
address(const unsigned char *p, int v6, int which)
{
    Py_ssize_t size = v6 ? 16 : 4;
    PyObject *last = last_address[v6][which];
    if (last != NULL && memcmp(PyBytes_AS_STRING(last), p, size) == 0) {
        Py_INCREF(last);
        return last;
    }
    PyObject *made = PyBytes_FromStringAndSize((const char *)p, size);
    if (made == NULL)
        return NULL;
    Py_XSETREF(last_address[v6][which], Py_NewRef(made));
    return made;
}

/* A new instance of a tuple subclass (one of the NamedTuples) holding the
 * given references, which it steals; NULL (with every reference released)
 * when any is NULL or the allocation fails. */
static PyObject *
make_tuple(PyTypeObject *type, PyObject **items, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (items[i] == NULL) {
            for (Py_ssize_t j = 0; j < n; j++)
                Py_XDECREF(items[j]);
            return NULL;
        }
    }
    /* tuple.__new__(type, items) without the intermediate tuple: what
     * tuple_subtype_new does, and NamedTuple instances are plain tuples
     * of their subtype. */
    PyObject *made = type->tp_alloc(type, n);
    if (made == NULL) {
        for (Py_ssize_t j = 0; j < n; j++)
            Py_DECREF(items[j]);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        PyTuple_SET_ITEM(made, i, items[i]);
    return made;
}

/* Parse one packet.  On success returns a new Segment and sets *key to a
 * new FlowKey (this side's view: destination first) when key is not NULL;
 * a malformed packet returns NULL with *reason set and no Python error; a
 * Python error (memory) returns NULL with reason R_NONE. */
static PyObject *
parse(const unsigned char *p, Py_ssize_t size, int verify, PyObject **key, enum reason *reason)
{
    Py_ssize_t start, end;
    unsigned int ttl;
    int v6;
    const unsigned char *src, *dst;
    *reason = R_NONE;
    if (size < 20) {
        *reason = R_TRUNCATED;
        return NULL;
    }
    unsigned int version = p[0] >> 4;
    if (version == 4) {
        Py_ssize_t ihl = (Py_ssize_t)(p[0] & 0x0F) * 4;
        Py_ssize_t total = be16(p + 2);
        if (ihl < 20 || total < ihl || total > size) {
            *reason = R_BAD_LENGTH;
            return NULL;
        }
        if (be16(p + 6) & 0x3FFF) {
            *reason = R_FRAGMENT;
            return NULL;
        }
        if (p[9] != IPPROTO_TCP_NUM) {
            *reason = R_NOT_TCP;
            return NULL;
        }
        if (ihl != 20) {
            *reason = R_IP_OPTIONS;
            return NULL;
        }
        ttl = p[8];
        src = p + 12;
        dst = p + 16;
        start = ihl;
        end = total;
        v6 = 0;
    }
    else if (version == 6) {
        if (size < 40) {
            *reason = R_TRUNCATED;
            return NULL;
        }
        if (p[6] != IPPROTO_TCP_NUM) {
            *reason = R_NOT_TCP;
            return NULL;
        }
        ttl = p[7];
        src = p + 8;
        dst = p + 24;
        start = 40;
        end = 40 + (Py_ssize_t)be16(p + 4);
        if (end > size) {
            *reason = R_BAD_LENGTH;
            return NULL;
        }
        v6 = 1;
    }
    else {
        *reason = R_BAD_VERSION;
        return NULL;
    }
    if (end - start < 20) {
        *reason = R_TRUNCATED;
        return NULL;
    }
    const unsigned char *tcp = p + start;
    Py_ssize_t header = (Py_ssize_t)(tcp[12] >> 4) * 4;
    if (header < 20 || start + header > end) {
        *reason = R_BAD_LENGTH;
        return NULL;
    }
    if (verify) {
        Py_ssize_t length = end - start;
        uint64_t acc = pseudo_native(p, v6, (uint32_t)length) + sum_native(tcp, length);
        if (mod_ffff(fold_be(acc)) != 0) {
            *reason = R_BAD_CHECKSUM;
            return NULL;
        }
    }
    PyObject *src_obj = address(src, v6, 0);
    PyObject *dst_obj = address(dst, v6, 1);
    PyObject *sport = PyLong_FromLong(be16(tcp));
    PyObject *dport = PyLong_FromLong(be16(tcp + 2));
    if (key != NULL) {
        /* FlowKey(local_addr, local_port, remote_addr, remote_port). */
        Py_XINCREF(dst_obj);
        Py_XINCREF(dport);
        Py_XINCREF(src_obj);
        Py_XINCREF(sport);
        PyObject *key_items[4] = {dst_obj, dport, src_obj, sport};
        *key = make_tuple(flowkey_type, key_items, 4);
        if (*key == NULL) {
            Py_XDECREF(src_obj);
            Py_XDECREF(dst_obj);
            Py_XDECREF(sport);
            Py_XDECREF(dport);
            return NULL;
        }
    }
    PyObject *options;
    if (header == 20) {
        options = Py_NewRef(empty_bytes);
    }
    else {
        options = PyBytes_FromStringAndSize((const char *)tcp + 20, header - 20);
    }
    PyObject *items[11] = {
        src_obj,
        dst_obj,
        sport,
        dport,
        PyLong_FromUnsignedLong(be32(tcp + 4)),
        PyLong_FromUnsignedLong(be32(tcp + 8)),
        PyLong_FromLong(tcp[13]),
        PyLong_FromLong(be16(tcp + 14)),
        PyBytes_FromStringAndSize((const char *)tcp + header, end - start - header),
        options,
        PyLong_FromLong(ttl),
    };
    PyObject *segment = make_tuple(segment_type, items, 11);
    if (segment == NULL && key != NULL)
        Py_CLEAR(*key);
    return segment;
}

static int
check_configured(void)
{
    if (segment_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "faketcp_twisted.io._fastpath is not configured");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(parse_packet_doc,
"parse_packet(packet, verify_checksum=True) -> Segment\n\n"
"segment.parse_packet in C: the same Segment, or the same MalformedSegment\n"
"with the same reason, for any bytes.");

static PyObject *
fp_parse_packet(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"packet", "verify_checksum", NULL};
    Py_buffer packet;
    int verify = 1;
    if (check_configured() < 0)
        return NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|p:parse_packet", keywords, &packet, &verify))
        return NULL;
    enum reason reason;
    PyObject *segment = parse(packet.buf, packet.len, verify, NULL, &reason);
    PyBuffer_Release(&packet);
    if (segment == NULL && reason != R_NONE)
        PyErr_SetObject(malformed_type, reason_str[reason]);
    return segment;
}

/* ------------------------------------------------------------------------
 * Batch receive
 * ------------------------------------------------------------------------ */

/* One recvmmsg of up to want messages for a batch that has read received
 * so far.  Returns how many arrived; 0 when the socket is empty (or the
 * call was interrupted, or it failed after earlier reads of the batch: the
 * next batch meets the error); -1 with OSError set when the batch's first
 * read fails. */
static int
receive_messages(int fd, struct mmsghdr *messages, unsigned int want, Py_ssize_t received)
{
    int got = recvmmsg(fd, messages, want, MSG_DONTWAIT, NULL);
    if (got >= 0)
        return got;
    if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK || received > 0)
        return 0;
    PyErr_SetFromErrno(PyExc_OSError);
    return -1;
}

/* Append errno code to errors; -1 with a Python error set. */
static int
append_code(PyObject *errors, int code)
{
    PyObject *number = PyLong_FromLong(code);
    if (number == NULL)
        return -1;
    int failed = PyList_Append(errors, number);
    Py_DECREF(number);
    return failed;
}

/* One round of a batch send: a sendmmsg of messages[0:count] (count >= 1),
 * moving *index past what is done with: those the kernel took, or the first
 * when it failed for itself (unreachable, too big, an earlier ICMP error),
 * its errno appended to errors.  Returns 1 to go on, 0 to stop (the send
 * buffer is full, or that errno could not be recorded: it is lost, never
 * the index), -1 with a Python error set, only when nothing_done (nothing
 * of the call was done with yet, so raising loses nothing). */
static int
send_round(int fd, struct mmsghdr *messages, unsigned int count, Py_ssize_t *index, int nothing_done, PyObject *errors)
{
    for (;;) {
        int sent = sendmmsg(fd, messages, count, MSG_DONTWAIT);
        if (sent > 0) {
            *index += sent;
            return 1;
        }
        if (sent == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (append_code(errors, errno) < 0) {
            if (nothing_done)
                return -1;
            PyErr_Clear();
            (*index)++;
            return 0;
        }
        (*index)++;
        return 1;
    }
}

/* The receive buffers: BATCH slots of MAX_PACKET bytes, mapped once.  Only
 * the pages packets reach are ever touched (so resident memory is a few
 * pages per slot for ordinary packets).  The GIL is held throughout a call,
 * but making Python objects may run a finalizer that lets another thread in;
 * a call that finds the shared buffers busy maps its own for the call. */
#define BUFFERS_SIZE ((size_t)BATCH * MAX_PACKET)
static unsigned char *receive_buffers = NULL;
static int receive_buffers_busy = 0;

static unsigned char *
take_buffers(int *own)
{
    if (receive_buffers != NULL && !receive_buffers_busy) {
        receive_buffers_busy = 1;
        *own = 0;
        return receive_buffers;
    }
    void *mapped = mmap(NULL, BUFFERS_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mapped == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        return NULL;
    }
    if (receive_buffers == NULL) {
        /* The first call: these become the shared buffers. */
        receive_buffers = mapped;
        receive_buffers_busy = 1;
        *own = 0;
    }
    else {
        *own = 1;
    }
    return mapped;
}

static void
give_back_buffers(unsigned char *buffers, int own)
{
    if (own)
        munmap(buffers, BUFFERS_SIZE);
    else
        receive_buffers_busy = 0;
}

PyDoc_STRVAR(receive_segments_doc,
"receive_segments(fd, budget) -> (segments, keys, malformed)\n\n"
"Read up to budget packets from an AF_PACKET capture socket with recvmmsg\n"
"(PACKET_AUXDATA enabled) and parse each: the Segments, their FlowKeys in\n"
"the same order, and the MalformedSegment reason of every packet refused.\n"
"A packet's checksum is verified unless the kernel vouched for it.  Stops\n"
"early when the socket is empty; raises OSError only when the first read\n"
"fails with something other than EAGAIN or EINTR.");

static PyObject *
fp_receive_segments(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "receive_segments takes 2 arguments");
        return NULL;
    }
    if (check_configured() < 0)
        return NULL;
    int fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0)
        return NULL;
    Py_ssize_t budget = PyLong_AsSsize_t(args[1]);
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    int own;
    unsigned char *buffers = take_buffers(&own);
    if (buffers == NULL)
        return NULL;
    PyObject *segments = PyList_New(0);
    PyObject *keys = PyList_New(0);
    PyObject *malformed = PyList_New(0);
    if (segments == NULL || keys == NULL || malformed == NULL)
        goto error;

    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    union {
        char buffer[CMSG_SPACE(sizeof(struct tpacket_auxdata))];
        struct cmsghdr align;
    } control[BATCH];
    Py_ssize_t received = 0;
    while (received < budget) {
        unsigned int want = (unsigned int)(budget - received < BATCH ? budget - received : BATCH);
        for (unsigned int i = 0; i < want; i++) {
            vectors[i].iov_base = buffers + (size_t)i * MAX_PACKET;
            vectors[i].iov_len = MAX_PACKET;
            memset(&messages[i].msg_hdr, 0, sizeof(struct msghdr));
            messages[i].msg_hdr.msg_iov = &vectors[i];
            messages[i].msg_hdr.msg_iovlen = 1;
            messages[i].msg_hdr.msg_control = control[i].buffer;
            messages[i].msg_hdr.msg_controllen = sizeof(control[i].buffer);
        }
        int got = receive_messages(fd, messages, want, received);
        if (got < 0)
            goto error;
        for (int i = 0; i < got; i++) {
            int verify = 1;
            struct msghdr *header = &messages[i].msg_hdr;
            for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(header); cmsg != NULL; cmsg = CMSG_NXTHDR(header, cmsg)) {
                if (cmsg->cmsg_level == SOL_PACKET && cmsg->cmsg_type == PACKET_AUXDATA
                    && cmsg->cmsg_len >= CMSG_LEN(sizeof(uint32_t))) {
                    uint32_t status;
                    memcpy(&status, CMSG_DATA(cmsg), sizeof(status));
                    verify = !(status & TRUSTED);
                }
            }
            enum reason reason;
            PyObject *key = NULL;
            PyObject *segment = parse(vectors[i].iov_base, messages[i].msg_len, verify, &key, &reason);
            if (segment == NULL) {
                if (reason == R_NONE)
                    goto error;
                if (PyList_Append(malformed, reason_str[reason]) < 0)
                    goto error;
                continue;
            }
            int failed = PyList_Append(segments, segment) < 0 || PyList_Append(keys, key) < 0;
            Py_DECREF(segment);
            Py_DECREF(key);
            if (failed)
                goto error;
        }
        received += got;
        if ((unsigned int)got < want)
            break; /* the queue is empty: spare the call that says so */
    }
    give_back_buffers(buffers, own);
    return Py_BuildValue("(NNN)", segments, keys, malformed);

error:
    give_back_buffers(buffers, own);
    Py_XDECREF(segments);
    Py_XDECREF(keys);
    Py_XDECREF(malformed);
    return NULL;
}

/* ------------------------------------------------------------------------
 * Batch send
 * ------------------------------------------------------------------------ */

PyDoc_STRVAR(send_batch_doc,
"send_batch(fd, items, start) -> (next, errors)\n\n"
"Send the packets of items[start:] (each item a (packet, address) pair, a\n"
"packet a whole IP packet) on a raw IPPROTO_RAW socket with sendmmsg, each\n"
"to the destination address in its own IP header.  Stops when the send\n"
"buffer is full (EAGAIN).  Returns the index of the first item not taken\n"
"and the errno of every item the kernel refused (those are skipped).  Once\n"
"an item is done with, it never raises (the caller would lose the index):\n"
"a later item that is not a (bytes, address) pair is skipped with EINVAL,\n"
"and a failure of its own (memory) ends the call early.");

static PyObject *
fp_send_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send_batch takes 3 arguments");
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0)
        return NULL;
    PyObject *items = args[1];
    if (!PyList_Check(items)) {
        PyErr_SetString(PyExc_TypeError, "items must be a list");
        return NULL;
    }
    Py_ssize_t index = PyLong_AsSsize_t(args[2]);
    if (index == -1 && PyErr_Occurred())
        return NULL;
    if (index < 0)
        index = 0;
    Py_ssize_t start = index;
    PyObject *errors = PyList_New(0);
    if (errors == NULL)
        return NULL;

    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    union {
        struct sockaddr_in v4;
        struct sockaddr_in6 v6;
    } addresses[BATCH];

    while (index < PyList_GET_SIZE(items)) {
        Py_ssize_t count = PyList_GET_SIZE(items) - index;
        if (count > BATCH)
            count = BATCH;
        /* Messages the kernel cannot route by their header are refused here
         * with EINVAL, as sendto would refuse an impossible address. */
        Py_ssize_t ready = 0;
        int refused = 0;
        for (; ready < count; ready++) {
            PyObject *item = PyList_GET_ITEM(items, index + ready);
            PyObject *packet = PyTuple_Check(item) && PyTuple_GET_SIZE(item) == 2 ? PyTuple_GET_ITEM(item, 0) : NULL;
            if (packet == NULL || !PyBytes_Check(packet)) {
                if (ready == 0 && index == start && PyList_GET_SIZE(errors) == 0) {
                    Py_DECREF(errors);
                    PyErr_SetString(PyExc_TypeError, "items must be (packet bytes, address) pairs");
                    return NULL;
                }
                /* Items are done with already: this one is refused. */
                refused = 1;
                break;
            }
            const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(packet);
            Py_ssize_t size = PyBytes_GET_SIZE(packet);
            struct msghdr *header = &messages[ready].msg_hdr;
            memset(header, 0, sizeof(*header));
            memset(&addresses[ready], 0, sizeof(addresses[ready]));
            if (size >= 20 && (data[0] >> 4) == 4) {
                addresses[ready].v4.sin_family = AF_INET;
                memcpy(&addresses[ready].v4.sin_addr, data + 16, 4);
                header->msg_namelen = sizeof(struct sockaddr_in);
            }
            else if (size >= 40 && (data[0] >> 4) == 6) {
                addresses[ready].v6.sin6_family = AF_INET6;
                memcpy(&addresses[ready].v6.sin6_addr, data + 24, 16);
                header->msg_namelen = sizeof(struct sockaddr_in6);
            }
            else {
                refused = 1;
                break;
            }
            vectors[ready].iov_base = (void *)data;
            vectors[ready].iov_len = (size_t)size;
            header->msg_name = &addresses[ready];
            header->msg_iov = &vectors[ready];
            header->msg_iovlen = 1;
        }
        if (ready == 0 && refused) {
            if (append_code(errors, EINVAL) < 0) {
                if (index == start && PyList_GET_SIZE(errors) == 0) {
                    Py_DECREF(errors);
                    return NULL;
                }
                PyErr_Clear(); /* its errno is lost, never the index */
            }
            index++;
            continue;
        }
        int outcome = send_round(
            fd, messages, (unsigned int)ready, &index, index == start && PyList_GET_SIZE(errors) == 0, errors);
        if (outcome < 0) {
            Py_DECREF(errors);
            return NULL;
        }
        if (outcome == 0)
            break; /* the send buffer is full: wait for room */
    }
    return Py_BuildValue("(nN)", index, errors);
}

/* ------------------------------------------------------------------------
 * Batch receive of UDP datagrams
 * ------------------------------------------------------------------------ */

/* The last source address read and its Python form, reused while datagrams
 * keep coming from it (the usual case: one application per relay socket),
 * so a datagram costs no address formatting and the flow lookup hashes a
 * tuple whose strings cache their hash. */
static struct sockaddr_in6 last_source;
static socklen_t last_source_size = 0;
static PyObject *last_source_object = NULL;

/* The (host, port) or (host, port, flowinfo, scope_id) tuple that
 * socket.recvfrom gives for the address; NULL with an error set. */
static PyObject *
source_address(const struct sockaddr_storage *storage, socklen_t size)
{
    if (size == last_source_size && last_source_object != NULL && memcmp(&last_source, storage, size) == 0)
        return Py_NewRef(last_source_object);
    char text[INET6_ADDRSTRLEN];
    PyObject *made;
    if (storage->ss_family == AF_INET && size >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)storage;
        if (inet_ntop(AF_INET, &v4->sin_addr, text, sizeof(text)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        made = Py_BuildValue("(si)", text, ntohs(v4->sin_port));
    }
    else if (storage->ss_family == AF_INET6 && size >= sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)storage;
        if (inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof(text)) == NULL)
            return PyErr_SetFromErrno(PyExc_OSError);
        made = Py_BuildValue("(siII)", text, ntohs(v6->sin6_port), ntohl(v6->sin6_flowinfo), v6->sin6_scope_id);
    }
    else {
        PyErr_SetString(PyExc_OSError, "a datagram from an address that is neither IPv4 nor IPv6");
        return NULL;
    }
    if (made == NULL)
        return NULL;
    if (size <= sizeof(last_source)) {
        memcpy(&last_source, storage, size);
        last_source_size = size;
        Py_XSETREF(last_source_object, Py_NewRef(made));
    }
    return made;
}

PyDoc_STRVAR(receive_datagrams_doc,
"receive_datagrams(fd, budget, with_sources) -> (datagrams, sources)\n\n"
"Read up to budget datagrams from a non-blocking UDP socket with recvmmsg:\n"
"their payloads as bytes and, when with_sources is true, the source address\n"
"of each in the form socket.recvfrom gives (sources is None otherwise).\n"
"Stops early when the socket is empty; raises OSError only when the first\n"
"read fails with something other than EAGAIN or EINTR (ECONNREFUSED, say,\n"
"for an ICMP error on a connected socket).");

static PyObject *
fp_receive_datagrams(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "receive_datagrams takes 3 arguments");
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0)
        return NULL;
    Py_ssize_t budget = PyLong_AsSsize_t(args[1]);
    if (budget == -1 && PyErr_Occurred())
        return NULL;
    int with_sources = PyObject_IsTrue(args[2]);
    if (with_sources < 0)
        return NULL;
    int own;
    unsigned char *buffers = take_buffers(&own);
    if (buffers == NULL)
        return NULL;
    PyObject *datagrams = PyList_New(0);
    PyObject *sources = with_sources ? PyList_New(0) : Py_NewRef(Py_None);
    if (datagrams == NULL || sources == NULL)
        goto error;

    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    struct sockaddr_storage names[BATCH];
    Py_ssize_t received = 0;
    while (received < budget) {
        unsigned int want = (unsigned int)(budget - received < BATCH ? budget - received : BATCH);
        for (unsigned int i = 0; i < want; i++) {
            vectors[i].iov_base = buffers + (size_t)i * MAX_PACKET;
            vectors[i].iov_len = MAX_PACKET;
            memset(&messages[i].msg_hdr, 0, sizeof(struct msghdr));
            messages[i].msg_hdr.msg_iov = &vectors[i];
            messages[i].msg_hdr.msg_iovlen = 1;
            if (with_sources) {
                messages[i].msg_hdr.msg_name = &names[i];
                messages[i].msg_hdr.msg_namelen = sizeof(names[i]);
            }
        }
        int got = receive_messages(fd, messages, want, received);
        if (got < 0)
            goto error;
        for (int i = 0; i < got; i++) {
            /* A UDP payload fits MAX_PACKET bytes, so nothing is truncated. */
            PyObject *datagram = PyBytes_FromStringAndSize(vectors[i].iov_base, messages[i].msg_len);
            if (datagram == NULL)
                goto error;
            int failed = PyList_Append(datagrams, datagram) < 0;
            Py_DECREF(datagram);
            if (failed)
                goto error;
            if (with_sources) {
                PyObject *source = source_address(&names[i], messages[i].msg_hdr.msg_namelen);
                if (source == NULL)
                    goto error;
                failed = PyList_Append(sources, source) < 0;
                Py_DECREF(source);
                if (failed)
                    goto error;
            }
        }
        received += got;
        if ((unsigned int)got < want)
            break; /* the queue is empty: spare the call that says so */
    }
    give_back_buffers(buffers, own);
    return Py_BuildValue("(NN)", datagrams, sources);

error:
    give_back_buffers(buffers, own);
    Py_XDECREF(datagrams);
    Py_XDECREF(sources);
    return NULL;
}

/* ------------------------------------------------------------------------
 * Batch send of UDP datagrams
 * ------------------------------------------------------------------------ */

/* The last destination converted and its socket address: a relay sends a
 * flow's datagrams to the same address object every time, so comparing
 * the object spares converting the text address per datagram. */
static PyObject *last_destination = NULL;
static struct sockaddr_in6 last_destination_address;
static socklen_t last_destination_size = 0;

/* Fill *address from a (host, port) or (host, port, flowinfo, scope_id)
 * tuple with a numeric host, as sendto takes it; -1 with an error set. */
static int
destination_address(PyObject *destination, struct sockaddr_in6 *address, socklen_t *size)
{
    if (destination == last_destination && last_destination != NULL) {
        memcpy(address, &last_destination_address, last_destination_size);
        *size = last_destination_size;
        return 0;
    }
    if (!PyTuple_Check(destination) || PyTuple_GET_SIZE(destination) < 2 || PyTuple_GET_SIZE(destination) > 4) {
        PyErr_SetString(PyExc_TypeError, "a destination is a (host, port) tuple");
        return -1;
    }
    const char *host = PyUnicode_Check(PyTuple_GET_ITEM(destination, 0)) ? PyUnicode_AsUTF8(PyTuple_GET_ITEM(destination, 0)) : NULL;
    if (host == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "a destination's host is a str");
        return -1;
    }
    long port = PyLong_AsLong(PyTuple_GET_ITEM(destination, 1));
    if (port == -1 && PyErr_Occurred())
        return -1;
    if (port < 0 || port > 0xFFFF) {
        PyErr_SetString(PyExc_OverflowError, "port must be 0-65535.");
        return -1;
    }
    memset(address, 0, sizeof(*address));
    if (strchr(host, ':') == NULL) {
        struct sockaddr_in *v4 = (struct sockaddr_in *)address;
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &v4->sin_addr) != 1) {
            PyErr_Format(PyExc_OSError, "not a numeric IPv4 address: %s", host);
            return -1;
        }
        *size = sizeof(struct sockaddr_in);
    }
    else {
        address->sin6_family = AF_INET6;
        address->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &address->sin6_addr) != 1) {
            PyErr_Format(PyExc_OSError, "not a numeric IPv6 address: %s", host);
            return -1;
        }
        if (PyTuple_GET_SIZE(destination) >= 3) {
            unsigned long flowinfo = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(destination, 2));
            if (flowinfo == (unsigned long)-1 && PyErr_Occurred())
                return -1;
            address->sin6_flowinfo = htonl((uint32_t)flowinfo);
        }
        if (PyTuple_GET_SIZE(destination) == 4) {
            unsigned long scope = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(destination, 3));
            if (scope == (unsigned long)-1 && PyErr_Occurred())
                return -1;
            address->sin6_scope_id = (uint32_t)scope;
        }
        *size = sizeof(struct sockaddr_in6);
    }
    Py_XSETREF(last_destination, Py_NewRef(destination));
    memcpy(&last_destination_address, address, *size);
    last_destination_size = *size;
    return 0;
}

PyDoc_STRVAR(send_datagrams_doc,
"send_datagrams(fd, datagrams, destinations) -> (next, errors)\n\n"
"Send the datagrams (bytes) on a UDP socket with sendmmsg: on a connected\n"
"socket when destinations is None, else each to the (host, port) address\n"
"at the same index of destinations (numeric hosts, as recvfrom gives them).\n"
"Stops when the send buffer is full (EAGAIN).  Returns the index of the\n"
"first datagram not taken and the errno of every datagram the kernel\n"
"refused (those are skipped).  Once a datagram is done with, it never\n"
"raises (the caller would lose the index): a later datagram that is not\n"
"bytes, or whose destination is not a numeric address, is skipped with\n"
"EINVAL, and a failure of its own (memory) ends the call early.");

static PyObject *
fp_send_datagrams(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "send_datagrams takes 3 arguments");
        return NULL;
    }
    int fd = PyObject_AsFileDescriptor(args[0]);
    if (fd < 0)
        return NULL;
    PyObject *datagrams = args[1];
    PyObject *destinations = args[2] == Py_None ? NULL : args[2];
    if (!PyList_Check(datagrams) || (destinations != NULL && !PyList_Check(destinations))) {
        PyErr_SetString(PyExc_TypeError, "datagrams and destinations must be lists");
        return NULL;
    }
    if (destinations != NULL && PyList_GET_SIZE(destinations) != PyList_GET_SIZE(datagrams)) {
        PyErr_SetString(PyExc_ValueError, "one destination per datagram");
        return NULL;
    }
    PyObject *errors = PyList_New(0);
    if (errors == NULL)
        return NULL;

    struct mmsghdr messages[BATCH];
    struct iovec vectors[BATCH];
    struct sockaddr_in6 addresses[BATCH];
    Py_ssize_t index = 0;
    while (index < PyList_GET_SIZE(datagrams)) {
        Py_ssize_t count = PyList_GET_SIZE(datagrams) - index;
        if (count > BATCH)
            count = BATCH;
        Py_ssize_t ready = 0;
        int bad = 0;
        for (; ready < count; ready++) {
            Py_ssize_t i = ready;
            PyObject *datagram = PyList_GET_ITEM(datagrams, index + i);
            if (!PyBytes_Check(datagram)) {
                PyErr_SetString(PyExc_TypeError, "datagrams must be bytes");
                bad = 1;
                break;
            }
            struct msghdr *header = &messages[i].msg_hdr;
            memset(header, 0, sizeof(*header));
            vectors[i].iov_base = PyBytes_AS_STRING(datagram);
            vectors[i].iov_len = (size_t)PyBytes_GET_SIZE(datagram);
            header->msg_iov = &vectors[i];
            header->msg_iovlen = 1;
            if (destinations != NULL) {
                socklen_t size;
                if (destination_address(PyList_GET_ITEM(destinations, index + i), &addresses[i], &size) < 0) {
                    bad = 1;
                    break;
                }
                header->msg_name = &addresses[i];
                header->msg_namelen = size;
            }
        }
        if (bad) {
            if (ready == 0) {
                if (index == 0 && PyList_GET_SIZE(errors) == 0)
                    goto error; /* nothing done with yet: raise */
                /* Datagrams are done with already: this one is refused. */
                PyErr_Clear();
                if (append_code(errors, EINVAL) < 0)
                    PyErr_Clear(); /* its errno is lost, never the index */
                index++;
                continue;
            }
            /* Send those before it; it comes first in the next round. */
            PyErr_Clear();
        }
        int outcome = send_round(
            fd, messages, (unsigned int)ready, &index, index == 0 && PyList_GET_SIZE(errors) == 0, errors);
        if (outcome < 0)
            goto error;
        if (outcome == 0)
            break; /* the send buffer is full */
    }
    return Py_BuildValue("(nN)", index, errors);

error:
    Py_DECREF(errors);
    return NULL;
}

/* ------------------------------------------------------------------------
 * Module
 * ------------------------------------------------------------------------ */

PyDoc_STRVAR(configure_doc,
"configure(segment_type, flowkey_type, malformed_type) -> None\n\n"
"Hand over the NamedTuple types to return and the exception to raise.");

static PyObject *
fp_configure(PyObject *self, PyObject *args)
{
    PyObject *segment, *flowkey, *malformed;
    if (!PyArg_ParseTuple(args, "O!O!O:configure", &PyType_Type, &segment, &PyType_Type, &flowkey, &malformed))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)segment, &PyTuple_Type)
        || !PyType_IsSubtype((PyTypeObject *)flowkey, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "segment and flow key types must be tuple subclasses");
        return NULL;
    }
    Py_XSETREF(segment_type, (PyTypeObject *)Py_NewRef(segment));
    Py_XSETREF(flowkey_type, (PyTypeObject *)Py_NewRef(flowkey));
    Py_XSETREF(malformed_type, Py_NewRef(malformed));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"internet_checksum_sum", (PyCFunction)(void (*)(void))fp_internet_checksum_sum, METH_FASTCALL, internet_checksum_sum_doc},
    {"build_segment", (PyCFunction)(void (*)(void))fp_build_segment, METH_FASTCALL, build_segment_doc},
    {"parse_packet", (PyCFunction)(void (*)(void))fp_parse_packet, METH_VARARGS | METH_KEYWORDS, parse_packet_doc},
    {"receive_segments", (PyCFunction)(void (*)(void))fp_receive_segments, METH_FASTCALL, receive_segments_doc},
    {"send_batch", (PyCFunction)(void (*)(void))fp_send_batch, METH_FASTCALL, send_batch_doc},
    {"receive_datagrams", (PyCFunction)(void (*)(void))fp_receive_datagrams, METH_FASTCALL, receive_datagrams_doc},
    {"send_datagrams", (PyCFunction)(void (*)(void))fp_send_datagrams, METH_FASTCALL, send_datagrams_doc},
    {"configure", fp_configure, METH_VARARGS, configure_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "faketcp_twisted.io._fastpath",
    "The per-packet hot path in C; use faketcp_twisted.fastpath, not this.",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__fastpath(void)
{
    PyObject *made = PyModule_Create(&module);
    if (made == NULL)
        return NULL;
    for (int i = 1; i < R_COUNT; i++) {
        reason_str[i] = PyUnicode_InternFromString(reason_text[i]);
        if (reason_str[i] == NULL)
            goto error;
    }
    empty_bytes = PyBytes_FromStringAndSize(NULL, 0);
    if (empty_bytes == NULL)
        goto error;
    if (PyModule_AddIntConstant(made, "BATCH", BATCH) < 0 || PyModule_AddIntConstant(made, "MAX_PACKET", MAX_PACKET) < 0)
        goto error;
    return made;

error:
    Py_DECREF(made);
    return NULL;
}
