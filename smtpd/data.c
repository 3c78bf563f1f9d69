/*
 * data.c - the message content parser, for DATA and for BDAT: finds the
 * end of data, removes dot stuffing, flags bare CR and bare LF, and counts
 * Received: headers for loop detection.
 *
 * This is the SMTP-smuggling defence. Only CR LF "." CR LF ends the data,
 * and only CR LF ends a line: a bare CR or bare LF is content, passed through
 * and flagged, never a line end, so no byte sequence can make a "." that
 * some other MTA would read as the end of data end it here too, or the
 * other way round. The session rejects a flagged message at the real end.
 *
 * BDAT content (RFC 3030) goes through the same code in raw mode: the
 * chunk sizes frame it, so there is no dot and no end to look for, but the
 * bare CR / bare LF rule and the Received: count are exactly those of DATA,
 * and a message reads the same whichever command carried it.
 *
 * It must never allocate, do I/O, or look at bytes past the end of data:
 * everything it needs to know across calls is in struct data_parser, so
 * any split of the input gives the same result as one call.
 */
#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "lib/lib.h"
#include "smtpd/smtpd.h"

static const char received[] = "received:";
#define RECEIVED_LEN	(sizeof(received) - 1)
#define HDR_NO_MATCH	0xff	/* this header line is not (or already was) counted */

void
data_parser_init(struct data_parser *p)
{
	memset(p, 0, sizeof(*p));
	p->state = DS_LINE_START;
	p->in_headers = true;
	p->header_line_start = true;
	p->hdr_match = 0;
}

void
data_parser_init_raw(struct data_parser *p)
{
	data_parser_init(p);
	p->raw = true;
}

/* Content bytes produced on a header line (its CR LF excluded). A chunk
 * may end anywhere inside "Received:", so the match carries over. */
static void
header_bytes(struct data_parser *p, const char *s, size_t n)
{
	size_t i, k;
	unsigned char c;

	p->header_line_start = false;
	if (p->hdr_match >= RECEIVED_LEN)
		return;
	k = RECEIVED_LEN - p->hdr_match;
	if (k > n)
		k = n;
	for (i = 0; i < k; i++) {
		c = (unsigned char)s[i];
		if (c >= 'A' && c <= 'Z')
			c += 'a' - 'A';
		if (c != (unsigned char)received[p->hdr_match + i]) {
			p->hdr_match = HDR_NO_MATCH;
			return;
		}
	}
	p->hdr_match += k;
	if (p->hdr_match == RECEIVED_LEN) {
		p->received++;
		p->hdr_match = HDR_NO_MATCH;
	}
}

/* A CR LF on a header line: an empty line ends the header section. */
static void
header_line_end(struct data_parser *p)
{
	if (p->header_line_start) {
		p->in_headers = false;
		return;
	}
	p->header_line_start = true;
	p->hdr_match = 0;
}

/* A CR that turned out not to precede an LF: content, and flagged. */
static void
bare_cr(struct data_parser *p)
{
	p->bare_cr_lf = true;
	if (p->in_headers)
		header_bytes(p, "\r", 1);
}

/*
 * Output never outgrows input by more than one byte per call: the only
 * byte produced late is the CR of a line-start ".\r" whose next byte is not
 * LF, and that CR was consumed (producing nothing) earlier.
 */
size_t
data_parse(struct data_parser *p, const char *in, size_t len,
	   char *out, size_t *outlen, bool *done)
{
	const char *s = in, *end = in + len, *stop, *lf;
	char *o = out;
	size_t n;

	*done = false;
	while (s < end) {
		switch (p->state) {
		case DS_LINE_START:
			/* raw (BDAT) content has no dots to remove and no end to find */
			if (*s == '.' && !p->raw) {
				s++;
				p->state = DS_DOT;
				continue;
			}
			p->state = DS_MID;
			continue;
		case DS_DOT:
			if (*s == '\r') {
				s++;
				p->state = DS_DOT_CR;
				continue;
			}
			/* the leading dot is dropped; the rest of the line is text */
			p->state = DS_MID;
			continue;
		case DS_DOT_CR:
			if (*s == '\n') {
				s++;
				*done = true;
				p->state = DS_LINE_START;
				goto out;
			}
			*o++ = '\r';
			bare_cr(p);
			p->state = DS_MID;
			continue;
		case DS_CR:
			if (*s == '\n') {
				*o++ = *s++;
				p->state = DS_LINE_START;
				if (p->in_headers)
					header_line_end(p);
				continue;
			}
			/* the CR is already in out; *s is looked at again as text */
			bare_cr(p);
			p->state = DS_MID;
			continue;
		case DS_MID:
			if (*s == '\r') {
				*o++ = *s++;
				p->state = DS_CR;
				continue;
			}
			if (*s == '\n') {
				/* a bare LF is text: the line goes on */
				p->bare_cr_lf = true;
				if (p->in_headers)
					header_bytes(p, s, 1);
				*o++ = *s++;
				continue;
			}
			/* the common case: a run of ordinary bytes up to CR or LF */
			stop = memchr(s, '\r', (size_t)(end - s));
			if (stop == NULL)
				stop = end;
			if ((lf = memchr(s, '\n', (size_t)(stop - s))) != NULL)
				stop = lf;
			n = (size_t)(stop - s);
			if (p->in_headers)
				header_bytes(p, s, n);
			memcpy(o, s, n);
			o += n;
			s = stop;
			continue;
		default:
			msg_panic("data_parse: bad parser state %d", (int)p->state);
		}
	}
out:
	*outlen = (size_t)(o - out);
	p->bytes += *outlen;
	return (size_t)(s - in);
}

/*
 * DATA content always ends with CR LF (the one before "." CR LF); BDAT
 * content may stop anywhere. Ending it the same way keeps one shape for
 * the spool and for every later reader, and makes a message sent by BDAT
 * byte for byte the one sent by DATA. A CR that ends the content has no LF
 * after it: it is bare.
 */
size_t
data_parse_end(struct data_parser *p, char out[2])
{
	size_t n = 0;

	if (!p->raw)
		return 0;       /* DATA ended at its "." line, after a CR LF */
	if (p->state == DS_CR) {
		bare_cr(p);
		p->state = DS_MID;
	}
	if (p->state == DS_MID) {
		out[n++] = '\r';
		out[n++] = '\n';
		if (p->in_headers)
			header_line_end(p);
		p->state = DS_LINE_START;
	}
	p->bytes += n;
	return n;
}
