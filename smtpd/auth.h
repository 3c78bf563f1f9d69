/*
 * auth.h - password checks and sender ownership for AUTH (auth.c), inside
 * an smtpd worker.
 */
#ifndef SORTER_SMTPD_AUTH_H
#define SORTER_SMTPD_AUTH_H

#include <stddef.h>

#include "lib/lib.h"

#define AUTH_PASS_MAX 1024

struct event_base;
struct auth;

enum auth_result { AUTH_OK, AUTH_FAIL, AUTH_TEMPFAIL };
typedef void auth_done_fn(void *arg, enum auth_result r);

/* Opens auth_map and sender_login_map and starts the hashing threads.
 * NULL with err set when a map spec cannot be understood or libcrypt
 * lacks yescrypt. */
struct auth *auth_new(struct event_base *base, const struct config *cf, char *err, size_t errlen);
void auth_free(struct auth *a);
/* sorterd -t: 0 when auth_map and sender_login_map (those configured) can
 * answer now, else -1 with "FILE:LINE: auth_map SPEC: reason". */
int auth_check_maps(const struct config *cf, char *err, size_t errlen);

/* Checks login/password; `done` runs later on the loop, exactly once, and
 * the caller's arg must stay valid until it has. */
void auth_check(struct auth *a, const char *login, const char *pass, auth_done_fn *done,
		void *arg);

enum sender_verdict { SENDER_OWNED, SENDER_NOT_OWNED, SENDER_TEMPFAIL, SENDER_WAIT };
/* May `login` use `sender` as its envelope sender? The login itself, or
 * a login that sender_login_map lists for the sender or its @domain.
 * SENDER_WAIT: a lookup is under way (auth_set_wakeup); ask again. */
enum sender_verdict auth_sender_owned(struct auth *a, const char *login, const char *sender,
				      char *why, size_t whylen);
/* sender_login_map answers SENDER_WAIT instead of waiting for a threaded
 * map (ldap:); fd as for map_set_wakeup. An ldap: auth_map is looked up
 * on the hashing threads, never on the loop. */
void auth_set_wakeup(struct auth *a, int fd);

/* A yescrypt hash of pass for auth_map (sorterctl passwd); -1 when
 * libcrypt cannot make one or it does not fit. */
int auth_hash_password(const char *pass, char *out, size_t outlen);

#endif
