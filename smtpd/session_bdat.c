/*
 * session_bdat.c - CHUNKING (RFC 3030) in an SMTP session: the BDAT
 * command, its chunk's octets counted off the input into the content
 * (session_content.c), and the reply once the chunk is in. The LAST chunk
 * ends the message as "." ends DATA.
 *
 * It must never take a chunk's octets for commands: a chunk that is
 * refused is still read, and dropped.
 */
#include "config.h"

#include <event2/buffer.h>

#include "lib/lib.h"
#include "lib/metrics.h"
#include "smtpd/milter.h"
#include "smtpd/session.h"
#include "smtpd/smtpd.h"

/* The octets of c's chunk are next on the input: content, or, when the
 * chunk is refused, to be read and dropped before `refused` is its reply. */
void
chunk_begin(struct session *s, const struct smtp_cmd *c, const char *refused)
{
	s->in_chunk = true;
	s->chunk_size = s->chunk_left = c->chunk_size;
	s->chunk_last = c->chunk_last;
	s->chunk_refused = refused;
	if (s->chunk_left > 0)
		set_read_timeout(s, s->w->cf->smtpd_data_timeout);
}

/*
 * BDAT n [LAST] (RFC 3030): n octets of content follow the line, whatever
 * the reply to it will be. So this handler checks the state itself rather
 * than leave it to dispatch(): a chunk that is refused must still be read,
 * and dropped, or its octets would be taken for commands. The reply, a
 * refusal too, goes out once the whole chunk is in (end_of_chunk), which
 * keeps the replies to pipelined chunks in order.
 */
void
do_bdat(struct session *s, struct smtp_cmd *c)
{
	const char *refused = NULL;

	/* the first chunk is DATA to the milters; it waits in the socket meanwhile */
	if (s->state == SS_RCPT && milter_hook(s, MS_DATA, c))
		return;
	if (s->state == SS_RCPT) {
		content_start(s, true);
		s->state = SS_BDAT;
	} else if (s->state != SS_BDAT)
		refused = out_of_state_text(s, VERB_BDAT);
	chunk_begin(s, c, refused);
}

/* Takes the buffered octets of the current BDAT chunk, through the parser
 * in raw mode (or into the void when the chunk is refused). Returns true
 * when the whole chunk is in. */
bool
take_chunk(struct session *s, struct evbuffer *in)
{
	struct evbuffer_iovec v;
	char chunk[16384];
	size_t outlen, take;
	bool done;

	while (s->chunk_left > 0 && !s->paused && evbuffer_get_length(in) > 0) {
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		take = v.iov_len < sizeof(chunk) ? v.iov_len : sizeof(chunk);
		if (take > s->chunk_left)
			take = (size_t)s->chunk_left;
		if (s->chunk_refused == NULL) {
			/* raw: every octet is content, and out is in */
			(void)data_parse(&s->dp, v.iov_base, take, chunk, &outlen, &done);
			content_add(s, chunk, outlen);
		}
		evbuffer_drain(in, take);
		s->chunk_left -= take;
	}
	return s->chunk_left == 0;
}

/*
 * The reply to a BDAT, once its chunk is in. The LAST chunk ends the
 * message as "." ends DATA: the same checks, the same commit, 250 only
 * after it. A chunk that takes the message over the size limit fails the
 * transaction at once (RFC 3030 3); chunks pipelined behind it then find
 * no transaction and get 503, their octets read and dropped.
 * smtpd_min_data_rate applies to the chunks of a message as to DATA.
 */
void
end_of_chunk(struct session *s)
{
	char end[2];
	size_t n;

	s->in_chunk = false;
	if (s->chunk_size > 0)
		set_read_timeout(s, s->w->cf->smtpd_timeout);
	if (s->chunk_refused != NULL) {
		reply_error(s, "%s", s->chunk_refused);
		return;
	}
	if (s->chunk_last) {
		n = data_parse_end(&s->dp, end);
		content_add(s, end, n);
		end_of_data(s);
		return;
	}
	if (s->too_big) {
		content_too_big(s);
		return;
	}
	reply(s, "250 2.0.0 Ok: %llu octets", (unsigned long long)s->chunk_size);
	/* the rate counts from the first chunk, the waits between chunks included,
	 * so that a trickle of small (or empty) chunks cannot hold a slot either */
	data_rate_check(s);
}
