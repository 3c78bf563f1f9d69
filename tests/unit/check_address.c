/*
 * check_address.c - unit tests for the RFC 5321 path parser and formatter
 * (lib/address.c). Tables of inputs with the exact result expected: bytes
 * consumed, local part and domain as written, or the reason for refusal.
 */
#include "config.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/lib.h"

#define N_(t) ((int)(sizeof(t) / sizeof((t)[0])))

#define NUL ADDR_ALLOW_NULL
#define PM ADDR_ALLOW_POSTMASTER
#define U8 ADDR_ALLOW_UTF8

/* 21 three-byte characters: 63 bytes, a label at its limit */
#define LI21 "\xe4\xbe\x8b\xe4\xbe\x8b\xe4\xbe\x8b\xe4\xbe\x8b\xe4\xbe\x8b\xe4\xbe\x8b\xe4\xbe\x8b" \
	"\xe4\xbe\x8b\xe4\xbe\x8b\xe4\xbe\x8b\xe4\xbe\x8b\xe4\xbe\x8b\xe4\xbe\x8b\xe4\xbe\x8b" \
	"\xe4\xbe\x8b\xe4\xbe\x8b\xe4\xbe\x8b\xe4\xbe\x8b\xe4\xbe\x8b\xe4\xbe\x8b\xe4\xbe\x8b"
/* 32 two-byte characters: 64 bytes */
#define AE32 "\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4" \
	"\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4" \
	"\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4" \
	"\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4\xc3\xa4"

struct acase {
	const char *in;
	int len;                /* 0: strlen(in) */
	int flags;
	int ret;                /* bytes consumed, or -1 */
	const char *local;      /* on success */
	const char *domain;
	bool null, literal;
	const char *why;        /* on failure: the exact reason */
};

static const struct acase good[] = {
	{ "<user@example.com>", 0, 0, 18, "user", "example.com", false, false, NULL },
	{ "user@example.com", 0, 0, 16, "user", "example.com", false, false, NULL },
	{ "user@example.com SIZE=1", 0, 0, 16, "user", "example.com", false, false, NULL },
	{ "<user@example.com> SIZE=1", 0, 0, 18, "user", "example.com", false, false, NULL },
	{ "<User.Name@Example.COM>", 0, 0, 23, "User.Name", "Example.COM", false, false, NULL },
	{ "<a.b.c@x-y.example>", 0, 0, 19, "a.b.c", "x-y.example", false, false, NULL },
	{ "<!#$%&'*+-/=?^_`{|}~@example.com>", 0, 0, 33, "!#$%&'*+-/=?^_`{|}~", "example.com", false, false, NULL },
	{ "<u@1.2.3.4.example>", 0, 0, 19, "u", "1.2.3.4.example", false, false, NULL },
	{ "<u@localhost>", 0, 0, 13, "u", "localhost", false, false, NULL },
	/* quoted local parts are kept as written */
	{ "<\"john doe\"@example.com>", 0, 0, 24, "\"john doe\"", "example.com", false, false, NULL },
	{ "\"john doe\"@example.com", 0, 0, 22, "\"john doe\"", "example.com", false, false, NULL },
	{ "<\"a\\\"b\"@x.example>", 0, 0, 18, "\"a\\\"b\"", "x.example", false, false, NULL },
	{ "<\"a\\\\b\"@x.example>", 0, 0, 18, "\"a\\\\b\"", "x.example", false, false, NULL },
	{ "<\"a@b\"@x.example>", 0, 0, 17, "\"a@b\"", "x.example", false, false, NULL },
	{ "<\"\"@x.example>", 0, 0, 14, "\"\"", "x.example", false, false, NULL },
	{ "<\"a>b\"@x.example>", 0, 0, 17, "\"a>b\"", "x.example", false, false, NULL },
	/* address literals */
	{ "<u@[127.0.0.1]>", 0, 0, 15, "u", "[127.0.0.1]", false, true, NULL },
	{ "<u@[255.255.255.255]>", 0, 0, 21, "u", "[255.255.255.255]", false, true, NULL },
	{ "<u@[010.0.0.1]>", 0, 0, 15, "u", "[010.0.0.1]", false, true, NULL },
	{ "<u@[IPv6:::1]>", 0, 0, 14, "u", "[IPv6:::1]", false, true, NULL },
	{ "<u@[ipv6:2001:db8::1]>", 0, 0, 22, "u", "[ipv6:2001:db8::1]", false, true, NULL },
	{ "<u@[IPv6:::ffff:192.0.2.1]>", 0, 0, 27, "u", "[IPv6:::ffff:192.0.2.1]", false, true, NULL },
	{ "<u@[x-tag:some-content]>", 0, 0, 24, "u", "[x-tag:some-content]", false, true, NULL },
	{ "u@[127.0.0.1] x", 0, 0, 13, "u", "[127.0.0.1]", false, true, NULL },
	/* source routes are parsed and dropped */
	{ "<@a.example,@b.example:u@c.example>", 0, 0, 35, "u", "c.example", false, false, NULL },
	{ "<@a.example:u@c.example>", 0, 0, 24, "u", "c.example", false, false, NULL },
	/* the null path and postmaster */
	{ "<>", 0, NUL, 2, "", "", true, false, NULL },
	{ "<> SIZE=5", 0, NUL, 2, "", "", true, false, NULL },
	{ "<>", 0, NUL | PM, 2, "", "", true, false, NULL },
	{ "<postmaster>", 0, PM, 12, "postmaster", "", false, false, NULL },
	{ "<PostMaster>", 0, PM, 12, "PostMaster", "", false, false, NULL },
	{ "postmaster", 0, PM, 10, "postmaster", "", false, false, NULL },
	{ "postmaster NOTIFY=NEVER", 0, PM, 10, "postmaster", "", false, false, NULL },
	{ "<postmaster@example.com>", 0, 0, 24, "postmaster", "example.com", false, false, NULL },
	/* never reads past len */
	{ "<u@example.com>trailing", 15, 0, 15, "u", "example.com", false, false, NULL },
	{ "u@example.comX", 13, 0, 13, "u", "example.com", false, false, NULL },
	/* RFC 6531 with ADDR_ALLOW_UTF8: local part, quoted string, domain labels */
	{ "<j\xc3\xb6rg@example.com>", 0, U8, 19, "j\xc3\xb6rg", "example.com", false, false, NULL },
	{ "j\xc3\xbcrgen@example.test SMTPUTF8", 0, U8, 20, "j\xc3\xbcrgen", "example.test", false, false, NULL },
	{ "<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.test>", 0, U8, 20,
	  "\xe7\x94\xa8\xe6\x88\xb7", "\xe4\xbe\x8b\xe5\xad\x90.test", false, false, NULL },
	{ "<user@b\xc3\xbc" "cher.example>", 0, U8, 22, "user", "b\xc3\xbc" "cher.example", false, false, NULL },
	{ "<a.\xc3\xb6.b@x-\xc3\xa4.example>", 0, U8, 21, "a.\xc3\xb6.b", "x-\xc3\xa4.example", false, false, NULL },
	{ "<\"j\xc3\xb6 rg\"@example.com>", 0, U8, 22, "\"j\xc3\xb6 rg\"", "example.com", false, false, NULL },
	{ "<\xf0\x9f\x98\x80@x.example>", 0, U8, 16, "\xf0\x9f\x98\x80", "x.example", false, false, NULL },
	{ "<\xf4\x8f\xbf\xbf@x.example>", 0, U8, 16, "\xf4\x8f\xbf\xbf", "x.example", false, false, NULL },
	{ "<\xc2\xa0@x.example>", 0, U8, 14, "\xc2\xa0", "x.example", false, false, NULL },
	{ "<@\xc3\xa4.example:u@c.example>", 0, U8, 25, "u", "c.example", false, false, NULL },
	{ "<u@" LI21 ">", 0, U8, 67, "u", LI21, false, false, NULL },
	{ "<user@example.com>", 0, U8, 18, "user", "example.com", false, false, NULL },
	{ "<>", 0, NUL | U8, 2, "", "", true, false, NULL },
	{ "<postmaster>", 0, PM | U8, 12, "postmaster", "", false, false, NULL },
};

static const struct acase bad[] = {
	{ "", 0, NUL | PM, -1, .why = "missing address" },
	{ "<", 0, NUL | PM, -1, .why = "missing address" },
	{ " user@example.com", 0, 0, -1, .why = "missing address" },
	{ "<>", 0, 0, -1, .why = "null address not allowed here" },
	{ "<>", 0, PM, -1, .why = "null address not allowed here" },
	{ "<postmaster>", 0, 0, -1, .why = "missing domain" },
	{ "<postmaster>", 0, NUL, -1, .why = "missing domain" },
	{ "<postmasters>", 0, PM, -1, .why = "missing domain" },
	{ "<@a.example:postmaster>", 0, PM, -1, .why = "missing domain" },
	{ "<user>", 0, 0, -1, .why = "missing domain" },
	{ "user", 0, 0, -1, .why = "missing domain" },
	{ "user SIZE=1", 0, 0, -1, .why = "missing domain" },
	{ "<user@>", 0, 0, -1, .why = "missing domain" },
	{ "user@", 0, 0, -1, .why = "missing domain" },
	{ "<@example.com>", 0, 0, -1, .why = "missing local part" },
	{ "@example.com", 0, 0, -1, .why = "missing local part" },
	/* domains */
	{ "<user@example.com.>", 0, 0, -1, .why = "trailing dot in domain" },
	{ "user@example.com.", 0, 0, -1, .why = "trailing dot in domain" },
	{ "<user@example..com>", 0, 0, -1, .why = "empty label in domain" },
	{ "<user@.example.com>", 0, 0, -1, .why = "empty label in domain" },
	{ "<user@-example.com>", 0, 0, -1, .why = "domain label starts with a hyphen" },
	{ "<user@example-.com>", 0, 0, -1, .why = "domain label ends with a hyphen" },
	{ "<user@exa_mple.com>", 0, 0, -1, .why = "invalid character in domain" },
	{ "<user@example.com x>", 0, 0, -1, .why = "invalid character in domain" },
	{ "<user@exa mple.com>", 0, 0, -1, .why = "invalid character in domain" },
	{ "<user@a,b>", 0, 0, -1, .why = "invalid character in domain" },
	{ "<user@example.com", 0, 0, -1, .why = "missing closing angle bracket" },
	{ "user@example.com>", 0, 0, -1, .why = "missing opening angle bracket" },
	{ "<u@c.example>", 5, 0, -1, .why = "trailing dot in domain" },
	{ "<u@c.example>", 12, 0, -1, .why = "missing closing angle bracket" },
	/* local parts */
	{ "<a..b@x.example>", 0, 0, -1, .why = "consecutive dots in local part" },
	{ "<.a@x.example>", 0, 0, -1, .why = "local part starts with a dot" },
	{ "<a.@x.example>", 0, 0, -1, .why = "local part ends with a dot" },
	{ "<a b@x.example>", 0, 0, -1, .why = "invalid character in local part" },
	{ "<a(b)@x.example>", 0, 0, -1, .why = "invalid character in local part" },
	{ "<a\"b\"@x.example>", 0, 0, -1, .why = "invalid character in local part" },
	{ "<\"abc@x.example>", 0, 0, -1, .why = "unterminated quoted string" },
	{ "<\"abc\\", 0, 0, -1, .why = "unterminated quoted string" },
	{ "\"abc", 0, 0, -1, .why = "unterminated quoted string" },
	{ "<\"a\"b@x.example>", 0, 0, -1, .why = "invalid character in local part" },
	/* address literals */
	{ "<u@[300.1.1.1]>", 0, 0, -1, .why = "invalid IPv4 address literal" },
	{ "<u@[256.1.1.1]>", 0, 0, -1, .why = "invalid IPv4 address literal" },
	{ "<u@[1.2.3.256]>", 0, 0, -1, .why = "invalid IPv4 address literal" },
	{ "<u@[1.2.3]>", 0, 0, -1, .why = "invalid IPv4 address literal" },
	{ "<u@[1.2.3.]>", 0, 0, -1, .why = "invalid IPv4 address literal" },
	{ "<u@[1.2.3.4 ]>", 0, 0, -1, .why = "invalid character in address literal" },
	{ "<u@[1.2.3.4.5]>", 0, 0, -1, .why = "invalid IPv4 address literal" },
	{ "<u@[1.2.3.0004]>", 0, 0, -1, .why = "invalid IPv4 address literal" },
	{ "<u@[1..2.3]>", 0, 0, -1, .why = "invalid IPv4 address literal" },
	{ "<u@[example.com]>", 0, 0, -1, .why = "invalid IPv4 address literal" },
	{ "<u@[IPv6:::g]>", 0, 0, -1, .why = "invalid IPv6 address literal" },
	{ "<u@[IPv6:1.2.3.4]>", 0, 0, -1, .why = "invalid IPv6 address literal" },
	{ "<u@[IPv6:]>", 0, 0, -1, .why = "invalid IPv6 address literal" },
	{ "<u@[IPv6:1:2:3:4:5:6:7:8:9]>", 0, 0, -1, .why = "invalid IPv6 address literal" },
	{ "<u@[]>", 0, 0, -1, .why = "empty address literal" },
	{ "<u@[tag:]>", 0, 0, -1, .why = "empty address literal" },
	{ "<u@[-tag:x]>", 0, 0, -1, .why = "invalid address literal tag" },
	{ "<u@[ta_g:x]>", 0, 0, -1, .why = "invalid address literal tag" },
	{ "<u@[:x]>", 0, 0, -1, .why = "invalid address literal tag" },
	{ "<u@[a b]>", 0, 0, -1, .why = "invalid character in address literal" },
	{ "<u@[a[b]>", 0, 0, -1, .why = "invalid character in address literal" },
	{ "<u@[127.0.0.1>", 0, 0, -1, .why = "unterminated address literal" },
	{ "<u@[1.2.3.4]x>", 0, 0, -1, .why = "unexpected text after address literal" },
	{ "<u@[1.2.3.4].example>", 0, 0, -1, .why = "unexpected text after address literal" },
	/* source routes */
	{ "<@a.example,b.example:u@c.example>", 0, 0, -1, .why = "invalid source route" },
	{ "<@a..example:u@c.example>", 0, 0, -1, .why = "empty label in domain" },
	{ "<@a.example;u@c.example>", 0, 0, -1, .why = "invalid character in source route" },
	{ "<@a.example", 0, 0, -1, .why = "missing closing angle bracket" },
	{ "<@:u@c.example>", 0, 0, -1, .why = "missing domain" },
	{ "<@[1.2.3.4]:u@c.example>", 0, 0, -1, .why = "invalid character in domain" },
	/* 8-bit and control bytes, wherever they are */
	{ "<j\xc3\xb6rg@example.com>", 0, 0, -1, .why = "8-bit character in address" },
	{ "<\xc3\xb6@example.com>", 0, 0, -1, .why = "8-bit character in address" },
	{ "<user@ex\xc3\xa4mple.com>", 0, 0, -1, .why = "8-bit character in address" },
	{ "<user@\xc3\xa4.com>", 0, 0, -1, .why = "8-bit character in address" },
	{ "<\"j\xc3\xb6rg\"@example.com>", 0, 0, -1, .why = "8-bit character in address" },
	{ "<\"a\\\xc3\xb6\"@example.com>", 0, 0, -1, .why = "8-bit character in address" },
	{ "<a.\xc3\xb6@example.com>", 0, 0, -1, .why = "8-bit character in address" },
	{ "<u@[1.2.3.\xff]>", 0, 0, -1, .why = "8-bit character in address" },
	{ "<u@example.com\x80>", 0, 0, -1, .why = "8-bit character in address" },
	{ "<@\xe4.example:u@c.example>", 0, 0, -1, .why = "8-bit character in address" },
	{ "<us\ter@x.example>", 0, 0, -1, .why = "control character in address" },
	{ "<user@x.exa\x01mple>", 0, 0, -1, .why = "control character in address" },
	{ "<\"a\x7f\"@x.example>", 0, 0, -1, .why = "control character in address" },
	{ "<us\0er@x.example>", 17, 0, -1, .why = "control character in address" },
	{ "<user@x.example\0>", 17, 0, -1, .why = "control character in address" },
	{ "user@x.example\r\n", 0, 0, -1, .why = "control character in address" },
	{ "<u@\0>", 5, 0, -1, .why = "control character in address" },
	{ "<u@x.\0>", 7, 0, -1, .why = "control character in address" },
	/* with ADDR_ALLOW_UTF8: well-formed UTF-8 only (RFC 3629), no controls */
	{ "<j\xc3rg@example.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<j\xc3", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<j\xc3\xb6rg@example.com>", 3, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<\x80@example.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<\xbf\xbf@example.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<\xc0\xaf@example.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<\xc1\xbf@example.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<\xe0\x80\xaf@example.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<\xe0\x9f\xbf@example.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<\xf0\x80\x80\xaf@example.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<\xf0\x8f\xbf\xbf@example.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<\xed\xa0\x80@example.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<\xed\xbf\xbf@example.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<\xf4\x90\x80\x80@example.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<\xf5\x80\x80\x80@example.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<\xff@example.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<u@ex\xe4mple.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<\"a\xe4\"@example.com>", 0, U8, -1, .why = "malformed UTF-8 in address" },
	{ "<\xc2\x80@example.com>", 0, U8, -1, .why = "control character in address" },
	{ "<a\xc2\x9f@example.com>", 0, U8, -1, .why = "control character in address" },
	{ "<u@x\xc2\x85.example>", 0, U8, -1, .why = "control character in address" },
	{ "<\"\xc2\x85\"@example.com>", 0, U8, -1, .why = "control character in address" },
	{ "<u@[1.2.3.\xc3\xa4]>", 0, U8, -1, .why = "8-bit character in address" },
	{ "<\"a\\\xc3\xb6\"@example.com>", 0, U8, -1, .why = "8-bit character in address" },
	{ "<u@-\xc3\xa4.example>", 0, U8, -1, .why = "domain label starts with a hyphen" },
	{ "<u@\xc3\xa4-.example>", 0, U8, -1, .why = "domain label ends with a hyphen" },
	{ "<u@" AE32 ">", 0, U8, -1, .why = "domain label too long" },
	{ "<u@" LI21 "\xc3\xa4.x>", 0, U8, -1, .why = "domain label too long" },
	{ "<u@x" AE32 ">", 0, U8, -1, .why = "domain label too long" },
	{ "<" AE32 "\xc3\xa4@example.com>", 0, U8, -1, .why = "local part too long" },
	{ "<j\xc3\xb6rg@example.com>", 0, NUL | PM, -1, .why = "8-bit character in address" },
};

static void
check_case(const struct acase *c, int idx)
{
	struct address a;
	const char *why = "unset";
	size_t len = c->len ? (size_t)c->len : strlen(c->in), i;
	int r;

	memset(&a, 0x5a, sizeof(a));
	r = address_parse(c->in, len, c->flags, &a, &why);
	ck_assert_msg(r == c->ret, "case %d \"%s\": returned %d (%s), want %d",
		      idx, c->in, r, why ? why : "-", c->ret);
	if (c->ret < 0) {
		ck_assert_msg(why != NULL && strcmp(why, c->why) == 0,
			      "case %d \"%s\": reason \"%s\", want \"%s\"",
			      idx, c->in, why ? why : "(null)", c->why);
		return;
	}
	ck_assert_str_eq(a.local, c->local);
	ck_assert_str_eq(a.domain, c->domain);
	ck_assert_int_eq(a.null, c->null);
	ck_assert_int_eq(a.literal, c->literal);
	/* utf8: exactly when the path taken has a byte >= 0x80 */
	for (i = 0; i < (size_t)r && (unsigned char)c->in[i] < 0x80; i++)
		;
	ck_assert_msg(a.utf8 == (i < (size_t)r), "case %d \"%s\": utf8 %d", idx, c->in, a.utf8);
}

START_TEST(test_good)
{
	check_case(&good[_i], _i);
}
END_TEST

START_TEST(test_bad)
{
	check_case(&bad[_i], _i);
}
END_TEST

/* ---- limits (RFC 5321 4.5.3.1) ---- */

struct lcase {
	int local;              /* local part length, as written */
	bool quoted;            /* local part is a quoted string */
	int domain;             /* domain length */
	bool angle;
	int route;              /* length of an "@r...r:" source route, 0 none */
	const char *why;        /* NULL: accepted */
};

static const struct lcase limits[] = {
	{ 64, false, 10, true, 0, NULL },
	{ 65, false, 10, true, 0, "local part too long" },
	{ 64, true, 10, true, 0, NULL },
	{ 65, true, 10, true, 0, "local part too long" },
	{ 1000, false, 10, true, 0, "local part too long" },
	{ 1, false, 252, true, 0, NULL },               /* path = 256 */
	{ 1, false, 253, true, 0, "address too long" },  /* path = 257 */
	{ 1, false, 252, false, 0, NULL },              /* as if bracketed: 256 */
	{ 1, false, 253, false, 0, "address too long" },
	{ 64, false, 188, true, 0, NULL },              /* 64 + 1 + 188 + 2 = 255 */
	{ 64, false, 189, true, 0, NULL },              /* = 256 */
	{ 64, false, 190, true, 0, "address too long" },
	{ 1, false, 255, true, 0, "address too long" },
	{ 1, false, 256, true, 0, "domain too long" },
	{ 1, false, 5000, false, 0, "domain too long" },
	{ 10, false, 10, true, 233, NULL },             /* route fills the path to 256 */
	{ 10, false, 10, true, 234, "address too long" },
	{ 10, false, 10, true, 5000, "domain too long" },
};

/* a domain of n bytes in labels of at most 49 */
static void
make_domain(char *p, int n)
{
	int i;

	for (i = 0; i < n; i++)
		p[i] = i % 50 == 49 ? '.' : 'b';
	if (p[n - 1] == '.')
		p[n - 1] = 'c', p[n - 2] = '.';     /* keep the last label non-empty */
}

START_TEST(test_limits)
{
	const struct lcase *c = &limits[_i];
	char *buf = xmalloc(16384);
	struct address a;
	const char *why;
	char out[1024];
	size_t n = 0;
	int r;

	if (c->angle)
		buf[n++] = '<';
	if (c->route) {
		buf[n++] = '@';
		make_domain(buf + n, c->route - 2);
		n += (size_t)c->route - 2;
		buf[n++] = ':';
	}
	if (c->quoted) {
		buf[n++] = '"';
		memset(buf + n, 'q', (size_t)c->local - 2);
		n += (size_t)c->local - 2;
		buf[n++] = '"';
	} else {
		memset(buf + n, 'a', (size_t)c->local);
		n += (size_t)c->local;
	}
	buf[n++] = '@';
	make_domain(buf + n, c->domain);
	n += (size_t)c->domain;
	if (c->angle)
		buf[n++] = '>';

	r = address_parse(buf, n, 0, &a, &why);
	if (c->why == NULL) {
		ck_assert_msg(r == (int)n, "case %d: returned %d (%s), want %zu", _i, r,
			      r < 0 ? why : "-", n);
		ck_assert_uint_eq(strlen(a.local), (size_t)c->local);
		ck_assert_uint_eq(strlen(a.domain), (size_t)c->domain);
		address_format(&a, out, sizeof(out));
		ck_assert_uint_le(strlen(out), ADDR_PATH_MAX - 2);
	} else {
		ck_assert_msg(r == -1, "case %d: accepted, want \"%s\"", _i, c->why);
		ck_assert_str_eq(why, c->why);
	}
	free(buf);
}
END_TEST

/* a source route of many short hops is bounded by the path limit too */
START_TEST(test_long_route)
{
	static const int hops[] = { 21, 22, 23, 1000 };     /* 11 bytes each */
	char *buf = xmalloc(16384);
	struct address a;
	const char *why;
	size_t n;
	int i, r;

	for (i = 0; i < N_(hops); i++) {
		int h;

		n = 0;
		buf[n++] = '<';
		for (h = 0; h < hops[i]; h++) {
			memcpy(buf + n, h ? ",@r.example" : "@r.example", h ? 11 : 10);
			n += h ? 11 : 10;
		}
		memcpy(buf + n, ":u@x.example>", 13);
		n += 13;
		r = address_parse(buf, n, 0, &a, &why);
		if (n <= ADDR_PATH_MAX) {
			ck_assert_int_eq(r, (int)n);
			ck_assert_str_eq(a.local, "u");
		} else {
			ck_assert_int_eq(r, -1);
			ck_assert_str_eq(why, "address too long");
		}
	}
	free(buf);
}
END_TEST

/* one label of n bytes, first or last in the domain (RFC 1035 2.3.4) */
struct labcase {
	int n;
	bool last;
	const char *why;
};

static const struct labcase labels[] = {
	{ 63, false, NULL },
	{ 63, true, NULL },
	{ 64, false, "domain label too long" },
	{ 64, true, "domain label too long" },
};

START_TEST(test_label)
{
	const struct labcase *c = &labels[_i];
	char buf[200];
	struct address a;
	const char *why;
	int n, r;

	if (c->last)
		n = snprintf(buf, sizeof(buf), "<u@x.%.*s>", c->n,
			     "ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc");
	else
		n = snprintf(buf, sizeof(buf), "<u@%.*s.x>", c->n,
			     "ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc");
	r = address_parse(buf, (size_t)n, 0, &a, &why);
	if (c->why == NULL) {
		ck_assert_int_eq(r, n);
	} else {
		ck_assert_int_eq(r, -1);
		ck_assert_str_eq(why, c->why);
	}
}
END_TEST

/* ---- formatting ---- */

struct fcase {
	const char *in;
	int flags;
	const char *out;
};

static const struct fcase fmt[] = {
	{ "<user@example.com>", 0, "user@example.com" },
	{ "user@example.com", 0, "user@example.com" },
	{ "<>", NUL, "" },
	{ "<postmaster>", PM, "postmaster" },
	{ "<POSTMASTER>", PM, "postmaster" },
	{ "<\"john doe\"@example.com>", 0, "\"john doe\"@example.com" },
	{ "<@a.example,@b.example:u@c.example>", 0, "u@c.example" },
	{ "<u@[IPv6:::1]>", 0, "u@[IPv6:::1]" },
};

START_TEST(test_format)
{
	const struct fcase *c = &fmt[_i];
	struct address a, b;
	const char *why;
	char out[ADDR_PATH_MAX + 1], again[ADDR_PATH_MAX + 3];

	ck_assert_int_gt(address_parse(c->in, strlen(c->in), c->flags, &a, &why), 0);
	address_format(&a, out, sizeof(out));
	ck_assert_str_eq(out, c->out);
	/* what we write, we read back as the same address */
	snprintf(again, sizeof(again), "<%s>", out);
	ck_assert_int_eq(address_parse(again, strlen(again), c->flags, &b, &why),
			 (int)strlen(again));
	address_format(&b, again, sizeof(again));
	ck_assert_str_eq(again, out);
}
END_TEST

START_TEST(test_format_truncates)
{
	struct address a;
	const char *why;
	char small[8];

	ck_assert_int_gt(address_parse("<user@example.com>", 18, 0, &a, &why), 0);
	memset(small, 'x', sizeof(small));
	address_format(&a, small, sizeof(small));
	ck_assert_str_eq(small, "user@ex");
	address_format(&a, small, 0);   /* must not write anything */
	ck_assert_str_eq(small, "user@ex");
}
END_TEST

START_TEST(test_why_optional)
{
	struct address a;

	ck_assert_int_eq(address_parse("<bad", 4, 0, &a, NULL), -1);
	ck_assert_int_eq(address_parse("<a@b>", 5, 0, &a, NULL), 5);
}
END_TEST

static Suite *
address_suite(void)
{
	Suite *s = suite_create("address");
	TCase *tc = tcase_create("core");

	tcase_add_loop_test(tc, test_good, 0, N_(good));
	tcase_add_loop_test(tc, test_bad, 0, N_(bad));
	tcase_add_loop_test(tc, test_limits, 0, N_(limits));
	tcase_add_test(tc, test_long_route);
	tcase_add_loop_test(tc, test_label, 0, N_(labels));
	tcase_add_loop_test(tc, test_format, 0, N_(fmt));
	tcase_add_test(tc, test_format_truncates);
	tcase_add_test(tc, test_why_optional);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(address_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed != 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
