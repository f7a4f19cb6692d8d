# Sieve (RFC 5228) rules for Dovecot/Pigeonhole: file mail by the headers mailstamp adds.
# The milter and the relay remove every X-Mailstamp-* header a sender wrote, so only theirs
# are seen here. See docs/MTA.md, "Inbound folders".
require ["fileinto", "mailbox", "envelope", "variables"];

# 1. A stamp that is forged, altered, replayed or broken: Junk.
if header :is "X-Mailstamp-Verdict" ["spam", "invalid"] {
    fileinto :create "Junk";
    stop;
}

# 2. The folder decision ([inbound] enabled): INBOX for a wanted stamp or an authenticated
#    authorised sender / allowlisted correspondent, else the separate folder it names. When
#    the recipients of one message disagree, X-Mailstamp-Folder names the separate folder and
#    X-Mailstamp-Inbox-For lists (as <address>) the recipients for whom it is INBOX.
if envelope :all :matches "to" "*" {
    set "rcpt" "${1}";
}
if allof (not string :is "${rcpt}" "",
          header :contains "X-Mailstamp-Inbox-For" "<${rcpt}>") {
    keep;
    stop;
}
if header :matches "X-Mailstamp-Folder" "*" {
    set "folder" "${1}";
}
if string :is "${folder}" "INBOX" {
    keep;
    stop;
}
if not string :is "${folder}" "" {
    fileinto :create "${folder}";
    stop;
}

# 3. Without the folder decision ([inbound] enabled = false): suspect stamps aside.
if header :is "X-Mailstamp-Verdict" "suspect" {
    fileinto :create "Suspect";
    stop;
}
