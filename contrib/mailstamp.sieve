# Sieve (RFC 5228) rule for Dovecot/Pigeonhole: file mail by the mailstamp verdict header.
# The milter removes any X-Mailstamp-* header a sender wrote, so only its own is seen here.
require ["fileinto", "mailbox"];

if header :is "X-Mailstamp-Verdict" "spam" {
    fileinto :create "Junk";
    stop;
}
if header :is "X-Mailstamp-Verdict" ["suspect", "invalid"] {
    fileinto :create "Suspect";
    stop;
}
