# Sieve (RFC 5228) rules for Dovecot/Pigeonhole: file mail by the headers mailstamp adds.
# The milter and the relay remove every X-Mailstamp-* header a sender wrote (inbound and
# outbound), so only theirs are seen here; as a second guard, mail is filed only into a folder
# name of the shape the agent allows. See docs/MTA.md, "Inbound folders".
require ["fileinto", "mailbox", "envelope", "variables", "regex"];

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
# Only a name the agent could have written (`[inbound] folder`: letters, digits, `-`, `_`,
# levels separated by `.` or `/`): never `..`, a leading separator or another odd name.
if string :regex "${folder}" "^[A-Za-z0-9_-]+([./][A-Za-z0-9_-]+)*$" {
    fileinto :create "${folder}";
    stop;
}

# 3. Without the folder decision ([inbound] enabled = false): suspect stamps aside.
if header :is "X-Mailstamp-Verdict" "suspect" {
    fileinto :create "Suspect";
    stop;
}
