/*
 * milter.h - Sorter as a milter client (the Sendmail milter protocol,
 * version 6): the pure codec (milter_proto.c), the message edits a
 * filter asks for and their application (milter_apply.c), and the client
 * that runs filters from a worker's event loop (milter.c, with its
 * connections in milter_conn.c).
 *
 * Used by the SMTP session only; nothing outside smtpd/ includes it.
 */
#ifndef SORTER_SMTPD_MILTER_H
#define SORTER_SMTPD_MILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "lib/lib.h"

/* ---- the protocol (milter_proto.c): pure, no I/O ---- */
#define MILTER_VERSION 6
#define MILTER_LEN_BYTES 4
/* The largest packet a filter may send: libmilter's biggest data size
 * (1 MiB, SMFIP_MDS_1M) with room for the command byte. */
#define MILTER_PACKET_MAX (1024 * 1024 + 16)
#define MILTER_CHUNK_MAX 65535    /* body bytes per SMFIC_BODY */
#define MILTER_REPLY_TEXT_MAX 4096
/* What the filters' edits may add past message_size_limit: signatures and
 * results headers are not the client's doing */
#define MILTER_EDIT_ROOM (64 * 1024)

/* MTA -> filter */
#define SMFIC_ABORT 'A'
#define SMFIC_BODY 'B'
#define SMFIC_CONNECT 'C'
#define SMFIC_MACRO 'D'
#define SMFIC_BODYEOB 'E'
#define SMFIC_HELO 'H'
#define SMFIC_HEADER 'L'
#define SMFIC_MAIL 'M'
#define SMFIC_EOH 'N'
#define SMFIC_OPTNEG 'O'
#define SMFIC_QUIT 'Q'
#define SMFIC_RCPT 'R'
#define SMFIC_DATA 'T'

/* filter -> MTA */
#define SMFIR_ADDRCPT '+'
#define SMFIR_DELRCPT '-'
#define SMFIR_ADDRCPT_PAR '2'
#define SMFIR_SHUTDOWN '4'
#define SMFIR_ACCEPT 'a'
#define SMFIR_REPLBODY 'b'
#define SMFIR_CONTINUE 'c'
#define SMFIR_DISCARD 'd'
#define SMFIR_CHGFROM 'e'
#define SMFIR_CONN_FAIL 'f'
#define SMFIR_ADDHEADER 'h'
#define SMFIR_INSHEADER 'i'
#define SMFIR_CHGHEADER 'm'
#define SMFIR_PROGRESS 'p'
#define SMFIR_QUARANTINE 'q'
#define SMFIR_REJECT 'r'
#define SMFIR_SKIP 's'
#define SMFIR_TEMPFAIL 't'
#define SMFIR_REPLYCODE 'y'
#define SMFIR_OPTNEG 'O'

/* actions a filter may take (negotiated) */
#define SMFIF_ADDHDRS 0x01
#define SMFIF_CHGBODY 0x02
#define SMFIF_ADDRCPT 0x04
#define SMFIF_DELRCPT 0x08
#define SMFIF_CHGHDRS 0x10
#define SMFIF_QUARANTINE 0x20
#define SMFIF_CHGFROM 0x40
#define SMFIF_ADDRCPT_PAR 0x80
#define SMFIF_SETSYMLIST 0x100
#define MILTER_ACTIONS_OFFERED 0x1ff

/* protocol steps a filter may skip, or not answer */
#define SMFIP_NOCONNECT 0x01
#define SMFIP_NOHELO 0x02
#define SMFIP_NOMAIL 0x04
#define SMFIP_NORCPT 0x08
#define SMFIP_NOBODY 0x10
#define SMFIP_NOHDRS 0x20
#define SMFIP_NOEOH 0x40
#define SMFIP_NR_HDR 0x80
#define SMFIP_NOUNKNOWN 0x100
#define SMFIP_NODATA 0x200
#define SMFIP_SKIP 0x400
#define SMFIP_RCPT_REJ 0x800
#define SMFIP_NR_CONN 0x1000
#define SMFIP_NR_HELO 0x2000
#define SMFIP_NR_MAIL 0x4000
#define SMFIP_NR_RCPT 0x8000
#define SMFIP_NR_DATA 0x10000
#define SMFIP_NR_UNKN 0x20000
#define SMFIP_NR_EOH 0x40000
#define SMFIP_NR_BODY 0x80000
#define SMFIP_HDR_LEADSPC 0x100000
/* everything above but RCPT_REJ: Sorter never shows refused recipients */
#define MILTER_PROTO_OFFERED 0x1ff7ff

/* The stages, in the order of a session; the macro stages (SMFIM_*) use
 * the same numbers for the first seven. */
enum milter_stage {
	MS_CONNECT = 0, MS_HELO = 1, MS_MAIL = 2, MS_RCPT = 3, MS_DATA = 4, MS_EOM = 5,
	MS_EOH = 6,
	MS_HEADER, MS_BODY, MS_OPTNEG,
	MS_MAX
};
#define MILTER_MACRO_STAGES 7
const char *milter_stage_name(enum milter_stage st);

/* Framing: a 4-byte big-endian length (command byte included), then the
 * command byte and its data. MILTER_FRAME_OK with *pktlen (the whole
 * packet, length field included) when buf starts with a complete packet;
 * NEED_MORE; or ERROR (a zero or too large length) with *why. */
enum milter_frame_status { MILTER_FRAME_OK, MILTER_FRAME_NEED_MORE, MILTER_FRAME_ERROR };
enum milter_frame_status milter_frame(const unsigned char *buf, size_t len, size_t *pktlen,
				      const char **why);

/* Encoders: each appends one whole packet to out. */
void milter_put(struct dstr *out, char cmd, const void *data, size_t n);
void milter_put_optneg(struct dstr *out, uint32_t version, uint32_t actions, uint32_t proto);
/* family: '4', '6', 'L' (unix) or 'U' (unknown: no port, no address) */
void milter_put_connect(struct dstr *out, const char *hostname, char family, uint16_t port,
			const char *addr);
/* NUL-terminated strings one after the other: HELO (one), MAIL and RCPT
 * ("<address>" then each ESMTP parameter) */
void milter_put_strings(struct dstr *out, char cmd, const char *const *v, size_t n);
void milter_put_header(struct dstr *out, const char *name, const char *value, size_t vlen);
/* names[i] = values[i] pairs for the stage's command byte */
void milter_put_macros(struct dstr *out, char cmd, const char *const *names,
		       const char *const *values, size_t n);

/* One packet from a filter (after the length field: the command byte and
 * its data), decoded. Strings point into the packet, which must stay. */
struct milter_reply {
	char type;                  /* SMFIR_* */
	uint32_t index;             /* INSHEADER, CHGHEADER */
	const char *name;           /* ADDHEADER, INSHEADER, CHGHEADER */
	const char *value;          /* the header value ("" = delete for CHGHEADER) */
	const char *text;           /* REPLYCODE reply, QUARANTINE reason, the address of
				     * ADDRCPT, ADDRCPT_PAR, DELRCPT, CHGFROM */
	const char *args;           /* ESMTP parameters of CHGFROM, ADDRCPT_PAR; NULL = none */
	const unsigned char *data;  /* REPLBODY */
	size_t len;
	/* OPTNEG */
	uint32_t version, actions, proto;
	const char *macros[MILTER_MACRO_STAGES];  /* the filter's own lists, or NULL */
};

/* Decodes one packet of len bytes (len >= 1). 0, or -1 with *why: an
 * unknown command, a missing NUL, a missing or extra byte. */
int milter_reply_parse(const unsigned char *pkt, size_t len, struct milter_reply *r,
		       const char **why);

/* What a filter's OPTNEG reply leaves: the version, actions and steps it
 * asked for, checked against what was offered. 0, or -1 with *why. */
int milter_negotiate(const struct milter_reply *r, uint32_t offered_actions,
		     uint32_t offered_proto, const char **why);

/* May a filter send this reply at this stage, with these actions? */
bool milter_reply_allowed(enum milter_stage st, char type, uint32_t actions);

/* A filter's SMFIR_REPLYCODE text, made a reply Sorter can send: a 4xx or
 * 5xx code, one or more lines (CRLF between them) with the same code and
 * '-' continuations, printable ASCII; an enhanced status code of the
 * reply's class is put in where a line has none. 0 with out set (CRLF
 * between lines, none at the end), or -1 with *why. */
int milter_replycode(const char *text, struct dstr *out, const char **why);

/* ---- the header section and the edits (milter_apply.c): pure ---- */
struct mhdr {
	char *name;                 /* as written */
	char *value;                /* everything after the colon up to the final CRLF,
				     * folds (CRLF WSP) included */
};

struct mhdrs {
	struct mhdr *v;
	size_t n;
};

/* Splits the header section at the start of the message (len bytes, CRLF
 * lines): the headers, and the offset where the body starts (after the
 * empty line; at the first line that is not a header when there is none;
 * len when the message is all headers). Returns -1 when no end of the
 * section is found within len bytes and !complete (read more first). */
ssize_t mhdrs_parse(const char *msg, size_t len, bool complete, struct mhdrs *h);
void mhdrs_free(struct mhdrs *h);
void mhdrs_copy(struct mhdrs *dst, const struct mhdrs *src);

enum mod_type {
	MOD_ADDHDR, MOD_INSHDR, MOD_CHGHDR,     /* header edits, applied in order */
	MOD_CHGFROM, MOD_ADDRCPT, MOD_DELRCPT,  /* envelope edits */
};

struct milter_mod {
	enum mod_type type;
	uint32_t index;             /* INSHDR: position (0 = first); CHGHDR: occurrence (1 = first) */
	char *name;                 /* header name */
	char *value;                /* the bytes after "Name:" (CRLF folds); CHGHDR: NULL = delete */
	char *addr;                 /* CHGFROM, ADDRCPT, DELRCPT (angle brackets removed) */
	char *args;                 /* CHGFROM, ADDRCPT: ESMTP parameters, or NULL */
	const char *milter;         /* who asked, for the log */
};

struct milter_mods {
	struct milter_mod *v;
	size_t n;
	bool body_replaced;
	struct dstr body;           /* the new body (CRLF lines) when body_replaced */
	char *quarantine;           /* a reason to put the message on hold, or NULL */
	const char *quarantine_by;
};

void milter_mods_init(struct milter_mods *m);
void milter_mods_free(struct milter_mods *m);
/* Moves the edits of src to the end of dst (src is left empty). */
void milter_mods_append(struct milter_mods *dst, struct milter_mods *src);

/* A filter's header value as the bytes that follow "Name:" in the
 * message: line breaks (LF, CRLF) become CRLF with a tab in front of a
 * continuation that lacks white space, empty lines go, and without
 * leadspc (SMFIP_HDR_LEADSPC) one space goes in front. NULL for a value
 * with control characters or a NUL. */
char *mhdr_value_from_filter(const char *v, bool leadspc);
/* A header name a filter may use: printable ASCII without ':' */
bool mhdr_name_ok(const char *name);
/* The value as a filter is shown it: without SMFIP_HDR_LEADSPC the white
 * space after the colon is left out */
const char *mhdr_value_for_filter(const char *value, bool leadspc);
/* Applies one header edit to h */
void mhdrs_apply(struct mhdrs *h, const struct milter_mod *mod);
/* Appends body bytes from a filter (SMFIR_REPLBODY pieces) to out with
 * every line end made CRLF (a lone CR or LF counts as one); *cr carries a
 * CR at the end of a piece over to the next. -1 when out's limit is hit. */
int milter_body_append(struct dstr *out, const unsigned char *p, size_t n, bool *cr);
int milter_body_finish(struct dstr *out, bool *cr);

/* The header section as the spool stores it: "Name:value" CRLF for each
 * header, then the empty line. */
void mhdrs_serialize(const struct mhdrs *h, struct dstr *out);
/* Moves a replaced body out of m (when m has one) into out; true if so. */
bool milter_mods_take_body(struct milter_mods *m, struct dstr *out);
/* Anything at all to apply: headers, body, envelope, quarantine */
bool milter_mods_any(const struct milter_mods *m);

/* The envelope the session holds, for the sender and recipient edits. */
struct milter_envelope {
	char **sender;              /* "" for <> */
	char **sender_params;       /* the spool's form, may be NULL */
	char ***rcpts;              /* "address params" (spool_rcpt_text) */
	size_t *nrcpt;
	bool smtputf8;              /* the transaction declared SMTPUTF8 */
	size_t rcpt_limit;
	/* Whether an added recipient may be added: 0 yes, 1 no (the checker
	 * logs why; the address is dropped), -1 a temporary failure (the
	 * message is refused with 451 4.3.0). */
	int (*check_rcpt)(void *arg, const char *addr, const char *milter);
	void *arg;
};

/* Applies the sender and recipient edits of m. 0, or -1 with why (a
 * malformed address or parameter from a filter: "5", or a temporary
 * failure of check_rcpt: "4", as why's first character). */
int milter_apply_envelope(const struct milter_mods *m, struct milter_envelope *env,
			  char *why, size_t whylen);

/* ---- the client (milter.c, milter_conn.c): one per SMTP session ---- */
struct event_base;
struct listener;
struct config;
struct milter_conf;
struct milter_client;

/* The milters of each of the worker's listeners (smtpd_milters, or the
 * listener's milters= option, found by address in cf). */
struct milter_conf *milter_conf_new(const struct config *cf, const struct listener *ls,
				    size_t nls);
void milter_conf_free(struct milter_conf *mcf);

/* A macro's value for this session now, or NULL when it has none. */
typedef const char *(*milter_macro_fn)(void *arg, const char *name);

enum milter_verdict { MILTER_CONTINUE, MILTER_REJECT, MILTER_TEMPFAIL, MILTER_DISCARD };

struct milter_result {
	enum milter_verdict verdict;
	const char *reply;          /* REJECT, TEMPFAIL: the whole SMTP reply to send */
	const char *milter;         /* who decided (a REJECT, TEMPFAIL or DISCARD) */
	/* end of message, owned by the client until its next call: */
	struct milter_mods *mods;   /* the edits */
	const struct mhdrs *headers; /* the header section with them applied */
	uint64_t body_off;          /* where the message's own body starts */
};

typedef void (*milter_done_fn)(void *arg, const struct milter_result *r);

/* NULL when the listener has no milters. */
struct milter_client *milter_client_new(struct event_base *base, const struct milter_conf *mcf,
					const struct listener *l, milter_macro_fn macro,
					void *arg);
/* Sends QUIT to every filter and closes; a call in progress is dropped
 * (its done is never called). */
void milter_client_free(struct milter_client *mc);

/*
 * The stages. Each hands the stage to the filters in order and calls done
 * (from the event loop, never from inside the call) with the first refusal
 * or with CONTINUE; one call at a time. A filter that fails (cannot be
 * reached, times out, breaks the protocol) gets its default action: a
 * TEMPFAIL or REJECT for this and every later stage of the session, or
 * (accept) it is left out for the rest of the session.
 */
void milter_connect(struct milter_client *mc, const char *addr, int family, unsigned port,
		    milter_done_fn done, void *arg);
void milter_helo(struct milter_client *mc, const char *helo, milter_done_fn done, void *arg);
/* args: the ESMTP parameters (NULL-terminated) */
void milter_mail(struct milter_client *mc, const char *sender, const char *const *args,
		 milter_done_fn done, void *arg);
void milter_rcpt(struct milter_client *mc, const char *rcpt, const char *const *args,
		 milter_done_fn done, void *arg);
void milter_data(struct milter_client *mc, milter_done_fn done, void *arg);

/* Where the message is read from, whatever holds it (the spool file as it
 * is being written): read() starts reading up to n bytes at offset off and
 * later calls done(done_arg, data, count) from the loop (count 0 at the
 * end, < 0 for an error). One read at a time. */
typedef void milter_read_done(void *done_arg, const void *data, ssize_t count);
struct milter_source {
	void (*read)(void *arg, uint64_t off, size_t n, milter_read_done *done, void *done_arg);
	uint64_t len;
	void *arg;
};

/* Headers, end of headers, body and end of message, to each filter in turn,
 * each shown the message as the ones before it edited it. The result's
 * mods are what the session applies before the commit (limit: the largest
 * message the edits may make). */
void milter_message(struct milter_client *mc, const struct milter_source *src, size_t limit,
		    milter_done_fn done, void *arg);
/* The transaction is over (RSET, HELO, a refusal, after the message):
 * filters in it are told (SMFIC_ABORT). No answer. */
void milter_abort(struct milter_client *mc);

/* The ESMTP parameters after the path of a MAIL or RCPT argument
 * ("FROM:<a@b> SIZE=10"), split into v (at most max, NULL-terminated, in
 * buf). */
size_t milter_esmtp_args(const char *arg, char *buf, size_t buflen, const char **v, size_t max);

#endif
