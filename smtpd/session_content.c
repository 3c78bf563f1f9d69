/*
 * session_content.c - a message's content on its way into the spool, for
 * DATA and BDAT alike: the queue file opened once the envelope is complete
 * (with Sorter's Received: header first), the content parsed (data.c) and
 * streamed in as it arrives, and the end of data: the checks, the milters'
 * last word, the commit and its reply. The DATA command is here too; BDAT's
 * framing is session_bdat.c's.
 *
 * It must never answer 250 before the commit completed, never hold more
 * of a message in memory than the stream's buffers, and never let one DATA
 * carry more than one message.
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "lib/lib.h"
#include "lib/metrics.h"
#include "queue/queue.h"
#include "smtpd/milter.h"
#include "smtpd/session.h"
#include "smtpd/smtpd.h"

static spool_stream_cb stream_resume;

/* Header folding for Received: words are appended with a space, or on a
 * new line (CRLF TAB) when the line would pass 78 characters; a word is
 * never split, so only a single overlong word makes a longer line. */
struct fold {
	struct dstr *d;
	size_t col;
};

static void
fold_word(struct fold *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void
fold_word(struct fold *f, const char *fmt, ...)
{
	char word[1024];
	va_list ap;
	size_t n;

	va_start(ap, fmt);
	vsnprintf(word, sizeof(word), fmt, ap);
	va_end(ap);
	n = strlen(word);
	if (f->col > 8 && f->col + 1 + n > 78) {
		dstr_printf(f->d, "\r\n\t%s", word);
		f->col = 8 + n;
	} else {
		dstr_printf(f->d, " %s", word);
		f->col += 1 + n;
	}
}

static void
add_received(struct session *s, struct dstr *out)
{
	struct fold f = { out, 9 };
	char date[64];

	rfc5322_date(time(NULL), date, sizeof(date));
	dstr_printf(out, "Received:");
	fold_word(&f, "from");
	fold_word(&f, "%s", s->helo);
	fold_word(&f, "([%s])", s->addr);
	if (s->tls)
		fold_word(&f, "(using %s)", s->tls_desc);
	fold_word(&f, "by");
	fold_word(&f, "%s", s->w->cf->hostname);
	fold_word(&f, "(Sorter)");
	fold_word(&f, "with %s", proto_name(s));
	fold_word(&f, "id %s%s", s->id, s->nrcpt == 1 ? "" : ";");
	if (s->nrcpt == 1)
		fold_word(&f, "for <%.*s>;", (int)spool_rcpt_addr_len(s->rcpts[0]), s->rcpts[0]);
	fold_word(&f, "%s", date);
	dstr_printf(out, "\r\n");
}

void
session_envelope(const struct session *s, const char *hold_reason, struct spool_envelope *env)
{
	memset(env, 0, sizeof(*env));
	env->id = s->id;
	env->arrival_usec = now_usec();
	env->client = s->addr;
	env->helo = s->helo;
	env->proto = proto_name(s);
	env->sender = s->sender;
	env->sender_params = s->sender_params;
	env->rcpts = (const char **)s->rcpts;
	env->nrcpt = s->nrcpt;
	env->hold_reason = hold_reason;
}

/* The content of a new message, by DATA or (raw) by BDAT. */
void
content_start(struct session *s, bool raw)
{
	struct spool_envelope env;
	struct dstr head, received;

	if (s->id[0] == '\0')          /* the milters were told one at MAIL */
		qid_next(s->id);
	/* the envelope is complete: the queue file starts now, and the content
	 * streams into it as it comes */
	session_envelope(s, NULL, &env);  /* a quarantine is an edit (milter_message_done) */
	dstr_init(&head, 0);
	spool_encode_head(&env, 0, &head);
	s->stream = spool_stream_open(s->w->commit, s->id, &head, stream_resume, s);
	dstr_free(&head);
	dstr_init(&received, 0);
	add_received(s, &received);
	(void)spool_stream_write(s->stream, received.s, received.len);
	dstr_free(&received);
	if (raw)
		data_parser_init_raw(&s->dp);
	else
		data_parser_init(&s->dp);
	s->data_start = now_usec();
	s->too_big = false;
}

void
do_data(struct session *s, struct smtp_cmd *c)
{
	if (milter_hook(s, MS_DATA, c))
		return;
	content_start(s, false);
	s->state = SS_DATA;
	set_read_timeout(s, s->w->cf->smtpd_data_timeout);
	reply(s, "354 End data with <CR><LF>.<CR><LF>");
}

/* An aborted message's file is gone: nothing to tell anybody. */
void
stream_dropped(void *arg, int error)
{
	(void)arg;
	(void)error;
}

/* The stream has room again: take more of the client's input. */
static void
stream_resume(void *arg)
{
	struct session *s = arg;

	s->paused = false;
	process_input(s);
}

static void
commit_done(void *arg, int error)
{
	struct session *s = arg;

	if (error == 0) {
		/* queued, whether or not the client is still there to hear it */
		char user[LOG_ESC_SIZE(ADDR_PATH_MAX)] = "", from[LOG_ESC_SIZE(ADDR_PATH_MAX)];

		if (s->login)
			log_esc(s->login, user, sizeof(user));
		msg_info("%s: from=<%s>, size=%llu, nrcpt=%zu, client=[%s]%s%s%s%s%s%s", s->id,
			 log_esc(s->sender, from, sizeof(from)), (unsigned long long)s->msg_size,
			 s->nrcpt, s->addr, s->tls ? ", tls=" : "", s->tls ? s->tls_desc : "",
			 s->login ? ", sasl_method=" : "", s->login ? s->auth_mech : "",
			 s->login ? ", sasl_username=" : "", user);
		atomic_fetch_add(&s->w->ctr->messages_in, 1);
		metrics_message_accepted((int)(s->listener - s->w->ls), s->msg_size);
		if (s->hold_reason == NULL)     /* a quarantined message waits in hold/ */
			qmgr_wake(s->w->cf->spool_dir, &s->w->wake_fd, s->id);
		if (s->gone)
			msg_info("%s: client [%s] left before the reply", s->id, s->addr);
		else {
			reply(s, "250 2.0.0 Ok: queued as %s", s->id);
			s->n_msgs++;
			s->junk = 0;    /* a client that moves mail may reset between messages */
		}
	} else {
		msg_warn("%s: queue file write error: %s", s->id, strerror(error));
		metrics_message_rejected((int)(s->listener - s->w->ls), MMR_STORAGE);
		if (!s->gone)
			reply(s, error == ENOSPC || error == EDQUOT ?
			      "452 4.3.1 Insufficient system storage" :
			      "451 4.3.0 Error: queue file write error");
	}
	s->stream = NULL;               /* it frees itself */
	s->committing = false;
	if (s->gone) {
		session_close(s);
		return;
	}
	s->state = SS_READY;
	transaction_reset(s);
	set_read_timeout(s, s->w->cf->smtpd_timeout);
	process_input(s);
	if (s->read_eof && s->state != SS_CLOSING &&
	    evbuffer_get_length(bufferevent_get_input(s->bev)) == 0) {
		/* nothing more will come: close once the replies are written
		 * (what is left unanswered waits for smtpd_timeout) */
		s->state = SS_CLOSING;
		bufferevent_disable(s->bev, EV_READ);
		bufferevent_enable(s->bev, EV_WRITE);
	}
}

void
content_too_big(struct session *s)
{
	msg_info("%s: reject: message from [%s] exceeds message_size_limit", s->id, s->addr);
	reply_error(s, "552 5.3.4 Error: message file too big");
	atomic_fetch_add(&s->w->ctr->rejected, 1);
	transaction_reset(s);
}

void
end_of_data(struct session *s)
{
	set_read_timeout(s, s->w->cf->smtpd_timeout);
	if (s->dp.bare_cr_lf) {
		msg_info("%s: reject: bare CR or LF in message content from [%s]", s->id, s->addr);
		reply_error(s, "554 5.6.0 Error: message contains bare CR or LF (RFC 5321 2.3.8)");
		atomic_fetch_add(&s->w->ctr->rejected, 1);
		metrics_message_rejected((int)(s->listener - s->w->ls), MMR_BARE_CR_LF);
		transaction_reset(s);
		return;
	}
	if (s->too_big) {
		metrics_message_rejected((int)(s->listener - s->w->ls), MMR_SIZE);
		content_too_big(s);
		return;
	}
	if (milter_hook(s, MS_EOM, NULL))
		return;
	s->state = SS_COMMIT;
	s->committing = true;
	s->paused = false;
	if (s->edit != NULL) {
		/* the filters changed it: the edited message is committed instead */
		s->msg_size = spool_edit_content_len(s->edit);
		spool_stream_commit_edited(s->stream, s->edit, commit_done);
		s->edit = NULL;         /* the stream owns it now */
		return;
	}
	s->msg_size = spool_stream_content_len(s->stream);
	spool_stream_commit(s->stream, commit_done);
}

/* Streams parsed content into the spool, until the message is over
 * message_size_limit: from then on it is still read, to stay in step, but
 * no longer kept. When the stream's buffers are full the session pauses
 * until it has room (stream_resume), and the client's input waits in the
 * socket: memory stays bounded however big the message. */
void
content_add(struct session *s, const char *p, size_t n)
{
	if (s->too_big || s->stream == NULL)
		return;
	if (s->dp.bytes > (uint64_t)s->w->cf->message_size_limit) {
		s->too_big = true;
		return;
	}
	if (spool_stream_write(s->stream, p, n))
		s->paused = true;
}

/* Feeds buffered DATA content to the parser. Returns true when the end of
 * data was reached. */
bool
take_data(struct session *s, struct evbuffer *in)
{
	struct evbuffer_iovec v;
	char chunk[16384 + 2];
	size_t used, outlen, take;
	bool done = false;

	while (!done && !s->paused && evbuffer_get_length(in) > 0) {
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		take = v.iov_len < sizeof(chunk) - 2 ? v.iov_len : sizeof(chunk) - 2;
		used = data_parse(&s->dp, v.iov_base, take, chunk, &outlen, &done);
		content_add(s, chunk, outlen);
		evbuffer_drain(in, used);
	}
	return done;
}

/* smtpd_min_data_rate: after the first 30 s, content must arrive at least
 * this fast, so that a client cannot hold a slot by dripping bytes. */
#define DATA_RATE_GRACE 30
void
data_rate_check(struct session *s)
{
	const struct config *cf = s->w->cf;
	uint64_t secs = (now_usec() - s->data_start) / 1000000;
	char buf[256];

	if (cf->smtpd_min_data_rate == 0 || secs <= DATA_RATE_GRACE ||
	    s->dp.bytes >= secs * (uint64_t)cf->smtpd_min_data_rate)
		return;
	msg_info("%s: content from [%s] slower than smtpd_min_data_rate=%d: %llu bytes in %llu s",
		 s->id, s->addr, cf->smtpd_min_data_rate, (unsigned long long)s->dp.bytes,
		 (unsigned long long)secs);
	snprintf(buf, sizeof(buf), "421 4.4.2 %s Error: data rate too low", cf->hostname);
	transaction_reset(s);
	reply_close(s, buf);
}
