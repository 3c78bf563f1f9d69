"""test_postfix.py - a real MTA talking to sorterd: a private Postfix relays to sorterd over
STARTTLS (smtp_tls_security_level = encrypt), as a site's outbound relay or a remote MTA does.
Postfix pipelines QUIT after the final dot; each message must be logged status=sent exactly
once by Postfix and queued exactly once by sorterd (a lost 250 makes Postfix defer and send
it again)."""

import os
import smtplib
import unittest

from harness import LOCAL_DOMAIN, SorterTestCase, free_port, message, wait_until
from postfix import PrivatePostfix, postfix_missing
from test_tls import make_cert

MESSAGES = 12


@unittest.skipIf(postfix_missing(), postfix_missing() or "")
class PostfixRelayTLSTest(SorterTestCase):
    def test_relay_over_starttls(self):
        cert, key = make_cert(self.tmp)
        d = self.sorterd(tls_cert_file=cert, tls_key_file=key)
        pf = PrivatePostfix(os.path.join(self.tmp, "postfix"), free_port(), main={
            "relayhost": "[127.0.0.1]:%d" % d.port,
            "smtp_tls_security_level": "encrypt",
        })
        self.addCleanup(pf.stop)
        pf.start()
        for i in range(MESSAGES):
            with smtplib.SMTP("127.0.0.1", pf.port, timeout=30) as s:
                s.sendmail("sender@lab.test", ["user%d@%s" % (i, LOCAL_DOMAIN)],
                           message("via postfix %d" % i).encode())
        done = wait_until(lambda: pf.queue_count() == 0 and
                          pf.log().count("status=sent") >= MESSAGES, 60)
        log = pf.log()
        self.assertTrue(done, "Postfix did not deliver everything:\n%s" % log)
        self.assertIn("TLS connection established to 127.0.0.1", log)
        self.assertNotIn("status=deferred", log)
        self.assertNotIn("lost connection", log)
        self.assertEqual(log.count("status=sent"), MESSAGES, log)
        queued = d.log_lines(r": from=<sender@lab\.test>, .*tls=")
        self.assertEqual(len(queued), MESSAGES,
                         "sorterd queued %d messages for %d sent" % (len(queued), MESSAGES))
