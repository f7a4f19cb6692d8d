// SPDX-License-Identifier: GPL-3.0-or-later
//! The milter, black-box: `milter::run` on a loopback port, indymilter-test playing the MTA
//! stage by stage, a real anvil with the registry behind it. Covers negotiation, the
//! outbound/inbound decision, stamping and verifying across two milters, each action of seed
//! 002's maps at its stage, chain outage, size limits, lost state and reload.

use std::ffi::CString;
use std::net::SocketAddr;
use std::sync::Arc;

use alloy::node_bindings::AnvilInstance;
use alloy::primitives::Address;
use indymilter_test::{
    Actions, EomAction, EomActions, MacroStage, ProtoOpts, Status, TestConnection,
};
use mailstamp::chain;
use mailstamp::config::Overrides;
use mailstamp::milter;
use mailstamp::session::{Daemon, Settings};
use tokio_util::sync::CancellationToken;

use crate::harness::{TempDir, anvil, milter_split as split, own_store, signer, tamper_body};

pub(crate) const T: std::time::Duration = std::time::Duration::from_secs(10);

/// A milter served on 127.0.0.1:0 until dropped.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) milter: Arc<Daemon>,
    stop: CancellationToken,
    pub(crate) dir: TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The chain half of a config: RPC, registry, trust in the writer for a.example, a DNS
/// server that never answers (the trust map decides for a.example).
pub(crate) fn chain_toml(rpc: &str, registry: Address, writer: Address) -> String {
    format!(
        "[chain]\nrpc_url = \"{rpc}\"\nregistry = \"{registry}\"\ntimeout_secs = 3\n\
         [dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout_secs = 1\nattempts = 1\n\
         [trust]\n\"a.example\" = [\"{writer}\"]\n"
    )
}

/// Starts a milter with the config `toml` and the map files `maps` (name, text) beside it.
pub(crate) async fn start(
    toml: &str,
    maps: &[(&str, &str)],
    key: Option<&AnvilInstance>,
) -> Running {
    let dir = TempDir::new("milter");
    for (name, text) in maps {
        std::fs::write(dir.0.join(name), text).unwrap();
    }
    let path = dir.0.join("mailstamp.toml");
    std::fs::write(&path, own_store(toml, &dir.0)).unwrap();
    let settings = Settings::load(Some(&path), &Overrides::default()).unwrap();
    let m = Arc::new(Daemon::new(
        settings,
        key.map(|a| signer(a, 0)),
        Some((path, Overrides::default())),
    ));
    let (listener, addr) = milter::bind("inet:127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = addr.strip_prefix("inet:").unwrap().parse().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(milter::run(
        listener,
        m.clone(),
        stop.clone().cancelled_owned(),
    ));
    Running {
        addr,
        milter: m,
        stop,
        dir,
    }
}

/// A chain with the registry deployed; returns (anvil, registry, writer address).
pub(crate) async fn chain() -> (AnvilInstance, Address, Address) {
    let a = anvil();
    let d = chain::deploy(&a.endpoint(), signer(&a, 0), true, T)
        .await
        .unwrap();
    let w = signer(&a, 0).address();
    (a, d.address, w)
}

const MSG: &str = "From: Alice <alice@a.example>\r\n\
To: Bob <bob@b.example>\r\n\
Subject:  two spaces and a fold,\r\n\tsecond line\r\n\
Date: Tue, 24 Nov 2026 03:00:00 +0000\r\n\
Message-ID: <m1@a.example>\r\n\
\r\n\
Hello Bob,\r\n\
\r\n\
the quarterly figures are attached in spirit. Regards, Alice\r\n";

/// How the MTA side of one message went.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The first status that was not Continue, and at which stage.
    pub(crate) stop: Option<(&'static str, Status)>,
    pub(crate) eom: Option<EomActions>,
}

impl Outcome {
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        self.eom.as_ref()?.actions.iter().find_map(|a| match a {
            EomAction::AddHeader { name: n, value }
            | EomAction::InsertHeader { name: n, value, .. }
                if n.to_str().unwrap() == name =>
            {
                Some(value.to_string_lossy().into_owned())
            }
            _ => None,
        })
    }
    fn quarantined(&self) -> bool {
        self.eom.as_ref().is_some_and(|e| {
            e.actions
                .iter()
                .any(|a| matches!(a, EomAction::Quarantine { .. }))
        })
    }
    pub(crate) fn reply(&self) -> String {
        match &self.stop {
            Some((
                _,
                Status::Reject { message: Some(m) } | Status::Tempfail { message: Some(m) },
            )) => m.to_string_lossy().into_owned(),
            _ => String::new(),
        }
    }
}

/// The SMTP session an MTA would have.
pub(crate) struct Smtp<'a> {
    pub(crate) ip: &'a str,
    pub(crate) host: &'a str,
    pub(crate) helo: &'a str,
    pub(crate) from: &'a str,
    pub(crate) rcpts: &'a [&'a str],
    pub(crate) auth: Option<&'a str>,
    pub(crate) daemon: Option<&'a str>,
}

pub(crate) const INBOUND: Smtp<'static> = Smtp {
    ip: "192.0.2.10",
    host: "mx.a.example",
    helo: "mx.a.example",
    from: "alice@a.example",
    rcpts: &["bob@b.example"],
    auth: None,
    daemon: None,
};

pub(crate) async fn open(addr: SocketAddr) -> TestConnection {
    TestConnection::configure()
        .exact_leading_space(true)
        .open_tcp(addr)
        .await
        .unwrap()
}

/// Plays one SMTP session with one message through the milter at `addr`.
pub(crate) async fn play(addr: SocketAddr, s: &Smtp<'_>, raw: &[u8]) -> Outcome {
    let mut c = open(addr).await;
    let out = play_on(&mut c, s, raw).await;
    let _ = c.close().await;
    out
}

async fn play_on(c: &mut TestConnection, s: &Smtp<'_>, raw: &[u8]) -> Outcome {
    macro_rules! step {
        ($name:literal, $e:expr) => {
            match $e.await.unwrap() {
                Status::Continue => {}
                other => {
                    return Outcome {
                        stop: Some(($name, other)),
                        eom: None,
                    };
                }
            }
        };
    }
    if let Some(d) = s.daemon {
        c.macros(MacroStage::Connect, [("{daemon_name}", d)])
            .await
            .unwrap();
    }
    let ip: std::net::IpAddr = s.ip.parse().unwrap();
    step!("connect", c.connect(s.host, (ip, 25000)));
    step!("helo", c.helo(s.helo));
    if let Some(a) = s.auth {
        c.macros(MacroStage::Mail, [("{auth_authen}", a)])
            .await
            .unwrap();
    }
    step!("mail", c.mail([format!("<{}>", s.from)]));
    for r in s.rcpts {
        step!("rcpt", c.rcpt([format!("<{r}>")]));
    }
    let (fields, body) = split(raw);
    for (n, v) in fields {
        step!("header", c.header(n, CString::new(v).unwrap()));
    }
    step!("eoh", c.eoh());
    for chunk in body.chunks(65535) {
        step!("body", c.body(chunk.to_vec()));
    }
    c.macros(MacroStage::Eom, [("i", "QID1")]).await.unwrap();
    let (actions, status) = c.eom().await.unwrap();
    Outcome {
        stop: (status != Status::Continue && status != Status::Accept).then_some(("eom", status)),
        eom: Some(actions),
    }
}

/// The message as the next hop gets it: the stamp the milter inserted, on top.
pub(crate) fn with_stamp(out: &Outcome, raw: &[u8]) -> Vec<u8> {
    let v = out.header("Mail-Stamp").expect("a Mail-Stamp header");
    let mut m = format!("Mail-Stamp:{}\r\n", v.replace('\n', "\r\n")).into_bytes();
    m.extend_from_slice(raw);
    m
}

#[tokio::test]
async fn negotiation_requires_leading_space_and_asks_only_for_used_macros() {
    let m = start("", &[], None).await;
    let c = open(m.addr).await;
    assert!(c.negotiated_opts().contains(ProtoOpts::LEADING_SPACE));
    assert_eq!(
        c.negotiated_actions(),
        Actions::ADD_HEADER | Actions::CHANGE_HEADER | Actions::QUARANTINE
    );
    let mut macros: Vec<_> = c
        .requested_macros()
        .iter()
        .map(|(k, v)| (format!("{k:?}"), v.to_str().unwrap().to_owned()))
        .collect();
    macros.sort();
    assert_eq!(
        macros,
        [
            ("Connect".to_owned(), "{daemon_name}".to_owned()),
            ("Eom".to_owned(), "i".to_owned()),
            ("Mail".to_owned(), "{auth_authen}".to_owned()),
        ]
    );
    // An MTA that cannot keep the leading space is refused at negotiation.
    let r = TestConnection::configure()
        .available_opts(ProtoOpts::all() - ProtoOpts::LEADING_SPACE)
        .open_tcp(m.addr)
        .await;
    assert!(r.is_err(), "negotiation without LEADING_SPACE must fail");
}

#[tokio::test]
async fn stamped_by_one_milter_verified_by_another_tampering_quarantined() {
    let (a, registry, writer) = chain().await;
    let base = chain_toml(&a.endpoint(), registry, writer);
    let sender = start(
        &format!("{base}[milter]\ntrusted_networks = [\"127.0.0.0/8\"]\n"),
        &[],
        Some(&a),
    )
    .await;
    let receiver = start(
        &format!(
            "{base}[milter]\nauthserv_id = \"mx.b.example\"\n\
             [milter.actions]\nspam = \"quarantine\"\nsuspect = \"quarantine\"\n"
        ),
        &[],
        None,
    )
    .await;
    let submit = Smtp {
        ip: "127.0.0.1",
        host: "localhost",
        ..INBOUND
    };
    let out = play(sender.addr, &submit, MSG.as_bytes()).await;
    assert!(out.stop.is_none(), "{out:?}");
    let actions = &out.eom.as_ref().unwrap().actions;
    assert!(
        matches!(&actions[..], [EomAction::InsertHeader { index: 0, .. }]),
        "outbound adds exactly the stamp, on top: {actions:?}"
    );
    let v = out.header("Mail-Stamp").unwrap();
    assert!(
        v.starts_with(' ') && !v.contains('\r'),
        "milter form: {v:?}"
    );
    let stamped = with_stamp(&out, MSG.as_bytes());

    // Received with a forged verdict header and a forged result for our authserv-id.
    let mut forged = b"X-Mailstamp-Verdict: wanted\r\n\
Authentication-Results: mx.b.example; mailstamp=pass\r\n\
Authentication-Results: other.example; dkim=pass\r\n"
        .to_vec();
    forged.extend_from_slice(&stamped);
    let out = play(receiver.addr, &INBOUND, &forged).await;
    assert!(out.stop.is_none(), "{out:?}");
    let ar = out.header("Authentication-Results").unwrap();
    assert!(
        ar.starts_with(" mx.b.example;\n\tmailstamp=pass (wanted"),
        "{ar}"
    );
    assert!(ar.contains("header.from=a.example"), "{ar}");
    assert!(
        ar.contains("policy.token=0x") && ar.contains("policy.tx=0x"),
        "{ar}"
    );
    assert_eq!(
        out.header("X-Mailstamp-Verdict").as_deref(),
        Some(" wanted")
    );
    assert_eq!(out.header("X-Mailstamp-Score").as_deref(), Some(" 1.00"));
    let e = out.eom.as_ref().unwrap();
    assert!(e.has_delete_header("X-Mailstamp-Verdict", 1), "{e:?}");
    assert!(e.has_delete_header("Authentication-Results", 1), "{e:?}");
    assert!(!e.has_delete_header("Authentication-Results", 2), "{e:?}");
    assert!(!out.quarantined());

    // The body changed on the way: not wanted, quarantined with the headers.
    let t = tamper_body(&stamped).expect("tamperable");
    let out = play(receiver.addr, &INBOUND, &t).await;
    assert!(out.stop.is_none(), "{out:?}");
    let verdict = out.header("X-Mailstamp-Verdict").unwrap();
    assert!(verdict == " spam" || verdict == " suspect", "{verdict}");
    assert!(out.quarantined(), "{out:?}");
    let ar = out.header("Authentication-Results").unwrap();
    assert!(
        ar.contains("mailstamp=fail") || ar.contains("mailstamp=neutral"),
        "{ar}"
    );

    // Unstamped mail: none, delivered with headers.
    let out = play(receiver.addr, &INBOUND, MSG.as_bytes()).await;
    assert!(
        out.header("Authentication-Results")
            .unwrap()
            .contains("mailstamp=none (unstamped)")
    );
    assert!(!out.quarantined());
    drop(a);
}

#[tokio::test]
async fn outbound_is_decided_by_auth_trusted_network_or_daemon_name() {
    let (a, registry, writer) = chain().await;
    let base = chain_toml(&a.endpoint(), registry, writer);
    let m = start(
        &format!(
            "{base}[milter]\ntrusted_networks = [\"10.0.0.0/8\"]\noutbound_daemons = [\"ORIGINATING\"]\n"
        ),
        &[],
        Some(&a),
    )
    .await;
    let stamped = |o: &Outcome| o.header("Mail-Stamp").is_some();
    let verified = |o: &Outcome| o.header("Authentication-Results").is_some();
    let o = play(m.addr, &INBOUND, MSG.as_bytes()).await;
    assert!(verified(&o) && !stamped(&o), "{o:?}");
    let o = play(
        m.addr,
        &Smtp {
            ip: "10.1.2.3",
            ..INBOUND
        },
        MSG.as_bytes(),
    )
    .await;
    assert!(stamped(&o) && !verified(&o), "trusted network: {o:?}");
    let o = play(
        m.addr,
        &Smtp {
            auth: Some("alice"),
            ..INBOUND
        },
        MSG.as_bytes(),
    )
    .await;
    assert!(stamped(&o), "SASL-authenticated: {o:?}");
    let o = play(
        m.addr,
        &Smtp {
            daemon: Some("ORIGINATING"),
            ..INBOUND
        },
        MSG.as_bytes(),
    )
    .await;
    assert!(stamped(&o), "outbound daemon: {o:?}");
}

#[tokio::test]
async fn connection_map_acts_at_connect_and_helo() {
    let map = "192.0.2.66 reject Go away\n\
               192.0.2.0/24 continue\n\
               198.51.100.7 tempfail\n\
               .listed.example reject listed host\n\
               helo:bad.example reject bad HELO\n\
               203.0.113.5 accept\n";
    let sender_map = "mallory@evil.example reject\n";
    let m = start(
        "[maps]\nconnection = \"conn.map\"\nsender = \"sender.map\"\n",
        &[("conn.map", map), ("sender.map", sender_map)],
        None,
    )
    .await;
    let o = play(
        m.addr,
        &Smtp {
            ip: "192.0.2.66",
            ..INBOUND
        },
        b"",
    )
    .await;
    assert!(
        matches!(o.stop, Some(("connect", Status::Reject { .. }))),
        "{o:?}"
    );
    assert!(
        o.reply().starts_with("550 5.7.1") && o.reply().contains("Go away"),
        "{o:?}"
    );
    let o = play(
        m.addr,
        &Smtp {
            ip: "198.51.100.7",
            ..INBOUND
        },
        b"",
    )
    .await;
    assert!(o.reply().starts_with("451 4.7.1"), "{o:?}");
    let o = play(
        m.addr,
        &Smtp {
            ip: "192.0.2.1",
            host: "mx.listed.example",
            ..INBOUND
        },
        b"",
    )
    .await;
    // The IP key `continue`s: the hostname is not looked up (most specific key decides).
    assert!(!matches!(o.stop, Some(("connect", _))), "{o:?}");
    let o = play(
        m.addr,
        &Smtp {
            ip: "198.18.0.1",
            host: "mx.listed.example",
            ..INBOUND
        },
        b"",
    )
    .await;
    assert!(o.reply().contains("listed host"), "{o:?}");
    let o = play(
        m.addr,
        &Smtp {
            helo: "bad.example",
            ..INBOUND
        },
        b"",
    )
    .await;
    assert!(
        matches!(o.stop, Some(("helo", Status::Reject { .. }))),
        "{o:?}"
    );
    // An accepted client skips the sender map; another client does not.
    let evil = Smtp {
        from: "mallory@evil.example",
        ..INBOUND
    };
    let o = play(m.addr, &evil, b"").await;
    assert!(
        matches!(o.stop, Some(("mail", Status::Reject { .. }))),
        "{o:?}"
    );
    let o = play(
        m.addr,
        &Smtp {
            ip: "203.0.113.5",
            ..evil
        },
        b"",
    )
    .await;
    assert!(!matches!(o.stop, Some(("mail", _))), "{o:?}");
}

#[tokio::test]
async fn sender_and_recipient_maps_act_in_access_order() {
    let (a, registry, writer) = chain().await;
    let base = chain_toml(&a.endpoint(), registry, writer);
    let senders = ".spam.example reject No mail from there\n\
                   ok.spam.example continue\n\
                   later@a.example tempfail\n\
                   trap@a.example discard\n";
    let rcpts = "nobody@b.example reject No such user here\n\
                 bob+spam@b.example discard\n\
                 bob@b.example accept\n\
                 ceo@b.example verify threshold=0.99 spam=reject suspect=reject\n";
    let m = start(
        &format!("{base}[maps]\nsender = \"s.map\"\nrecipient = \"r.map\"\n"),
        &[("s.map", senders), ("r.map", rcpts)],
        None,
    )
    .await;
    let o = play(
        m.addr,
        &Smtp {
            from: "x@mx.spam.example",
            ..INBOUND
        },
        b"",
    )
    .await;
    assert!(
        matches!(o.stop, Some(("mail", Status::Reject { .. }))),
        "{o:?}"
    );
    assert!(
        o.reply()
            .contains("<x@mx.spam.example>: No mail from there"),
        "{o:?}"
    );
    let o = play(
        m.addr,
        &Smtp {
            from: "x@ok.spam.example",
            ..INBOUND
        },
        b"",
    )
    .await;
    assert!(!matches!(o.stop, Some(("mail", _))), "{o:?}");
    let o = play(
        m.addr,
        &Smtp {
            from: "later@a.example",
            ..INBOUND
        },
        b"",
    )
    .await;
    assert!(
        matches!(o.stop, Some(("mail", Status::Tempfail { .. }))),
        "{o:?}"
    );
    let o = play(
        m.addr,
        &Smtp {
            from: "trap@a.example",
            ..INBOUND
        },
        b"",
    )
    .await;
    assert!(matches!(o.stop, Some(("mail", Status::Discard))), "{o:?}");
    let o = play(
        m.addr,
        &Smtp {
            rcpts: &["nobody@b.example"],
            ..INBOUND
        },
        b"",
    )
    .await;
    assert!(
        matches!(o.stop, Some(("rcpt", Status::Reject { .. }))),
        "{o:?}"
    );
    assert!(
        o.reply()
            .starts_with("550 5.7.1 <nobody@b.example>: No such user"),
        "{o:?}"
    );
    // user+tag@domain wins over user@domain; another tag falls back to user@domain.
    let o = play(
        m.addr,
        &Smtp {
            rcpts: &["bob+spam@b.example"],
            ..INBOUND
        },
        b"",
    )
    .await;
    assert!(matches!(o.stop, Some(("rcpt", Status::Discard))), "{o:?}");
    let o = play(
        m.addr,
        &Smtp {
            rcpts: &["bob+news@b.example"],
            ..INBOUND
        },
        MSG.as_bytes(),
    )
    .await;
    assert!(o.stop.is_none(), "{o:?}");
    // A per-recipient verify policy: unstamped mail is untouched, a tampered stamp refused.
    let sender = start(
        &format!("{base}[milter]\ntrusted_networks = [\"127.0.0.0/8\"]\n"),
        &[],
        Some(&a),
    )
    .await;
    let ceo = Smtp {
        rcpts: &["ceo@b.example"],
        ..INBOUND
    };
    let out = play(
        sender.addr,
        &Smtp {
            ip: "127.0.0.1",
            ..ceo
        },
        MSG.as_bytes(),
    )
    .await;
    let stamped = with_stamp(&out, MSG.as_bytes());
    let o = play(m.addr, &ceo, &stamped).await;
    assert!(o.stop.is_none(), "intact: {o:?}");
    let o = play(m.addr, &ceo, &tamper_body(&stamped).unwrap()).await;
    assert!(
        matches!(o.stop, Some(("eom", Status::Reject { .. }))),
        "{o:?}"
    );
    assert!(
        o.reply()
            .starts_with("550 5.7.1 mailstamp: message refused"),
        "{o:?}"
    );
    // The same tampered message to bob (no policy) gets the default: headers only.
    let o = play(m.addr, &INBOUND, &tamper_body(&stamped).unwrap()).await;
    assert!(o.stop.is_none(), "{o:?}");
}

#[tokio::test]
async fn chain_outage_tempfails_by_default_and_marks_by_policy() {
    let (a, registry, writer) = chain().await;
    let live = chain_toml(&a.endpoint(), registry, writer);
    let sender = start(
        &format!("{live}[milter]\ntrusted_networks = [\"127.0.0.0/8\"]\n"),
        &[],
        Some(&a),
    )
    .await;
    let submit = Smtp {
        ip: "127.0.0.1",
        ..INBOUND
    };
    let stamped = with_stamp(
        &play(sender.addr, &submit, MSG.as_bytes()).await,
        MSG.as_bytes(),
    );
    // Nothing listens on port 9: the chain is down for these milters.
    let dead = chain_toml("http://127.0.0.1:9", registry, writer);
    let strict = start(
        &format!("{dead}[milter]\ntrusted_networks = [\"127.0.0.0/8\"]\n"),
        &[],
        Some(&a),
    )
    .await;
    let o = play(strict.addr, &submit, MSG.as_bytes()).await;
    assert!(
        matches!(o.stop, Some(("eom", Status::Tempfail { .. }))),
        "{o:?}"
    );
    assert!(o.reply().starts_with("451 4.7.1"), "{o:?}");
    let o = play(strict.addr, &INBOUND, &stamped).await;
    assert!(
        matches!(o.stop, Some(("eom", Status::Tempfail { .. }))),
        "{o:?}"
    );
    // Unstamped mail needs no chain: judged at once.
    let o = play(strict.addr, &INBOUND, MSG.as_bytes()).await;
    assert!(o.stop.is_none(), "{o:?}");
    let lenient = start(
        &format!(
            "{dead}[milter]\ntrusted_networks = [\"127.0.0.0/8\"]\non_stamp_error = \"pass\"\non_temperror = \"pass\"\n"
        ),
        &[],
        Some(&a),
    )
    .await;
    let o = play(lenient.addr, &submit, MSG.as_bytes()).await;
    assert!(o.stop.is_none(), "{o:?}");
    assert!(o.header("Mail-Stamp").is_none());
    assert!(o.header("X-Mailstamp-Unstamped").is_some(), "{o:?}");
    let o = play(lenient.addr, &INBOUND, &stamped).await;
    assert!(o.stop.is_none(), "{o:?}");
    assert!(
        o.header("Authentication-Results")
            .unwrap()
            .contains("mailstamp=temperror"),
        "{o:?}"
    );
    assert_eq!(
        o.header("X-Mailstamp-Verdict").as_deref(),
        Some(" temperror")
    );
}

#[tokio::test]
async fn size_limit_refuses_with_552_and_lost_state_tempfails() {
    let m = start("[milter]\nmax_message_bytes = 2000\n", &[], None).await;
    let big = format!("{MSG}{}\r\n", "x".repeat(3000));
    let o = play(m.addr, &INBOUND, big.as_bytes()).await;
    assert!(
        matches!(o.stop, Some(("body", Status::Reject { .. }))),
        "{o:?}"
    );
    assert!(o.reply().starts_with("552 5.3.4"), "{o:?}");
    // SIZE= at MAIL FROM is refused before any byte is buffered.
    let mut c = open(m.addr).await;
    c.connect(
        "mx.a.example",
        ("192.0.2.10".parse::<std::net::IpAddr>().unwrap(), 25),
    )
    .await
    .unwrap();
    let s = c.mail(["<alice@a.example>", "SIZE=5000"]).await.unwrap();
    assert!(
        matches!(s, Status::Reject { message: Some(ref t) } if t.to_str().unwrap().starts_with("552")),
        "{s:?}"
    );
    // The next message on the same connection is fine.
    c.abort().await.unwrap();
    let s = c.mail(["<alice@a.example>", "SIZE=100"]).await.unwrap();
    assert_eq!(s, Status::Continue);
    let _ = c.close().await;
    // A session that never saw CONNECT has no state: tempfail, no panic.
    let mut c = open(m.addr).await;
    let s = c.mail(["<alice@a.example>"]).await.unwrap();
    assert!(matches!(s, Status::Tempfail { .. }), "{s:?}");
    // And the milter still serves.
    let o = play(m.addr, &INBOUND, MSG.as_bytes()).await;
    assert!(o.stop.is_none(), "{o:?}");
}

#[tokio::test]
async fn reload_swaps_maps_and_keeps_the_old_ones_on_a_bad_line() {
    let m = start(
        "[maps]\nrecipient = \"r.map\"\n",
        &[("r.map", "bob@b.example reject\n")],
        None,
    )
    .await;
    let refused = |o: &Outcome| matches!(o.stop, Some(("rcpt", Status::Reject { .. })));
    assert!(refused(&play(m.addr, &INBOUND, b"").await));
    std::fs::write(
        m.dir.0.join("r.map"),
        "# now\nbob@b.example accept\nx@y bounce\n",
    )
    .unwrap();
    let e = format!("{:#}", m.milter.reload().await.unwrap_err());
    assert!(e.contains("r.map:3: ") && e.contains("bounce"), "{e}");
    assert!(refused(&play(m.addr, &INBOUND, b"").await), "old map stays");
    std::fs::write(m.dir.0.join("r.map"), "bob@b.example accept\n").unwrap();
    m.milter.reload().await.unwrap();
    assert!(
        !refused(&play(m.addr, &INBOUND, b"").await),
        "new map in force"
    );
}

#[tokio::test]
async fn unix_socket_is_bound_and_a_stale_one_replaced() {
    let dir = TempDir::new("sock");
    let spec = format!("unix:{}", dir.0.join("milter.sock").display());
    let (l, _) = milter::bind(&spec).await.unwrap();
    // Live: a second milter may not take it.
    assert!(milter::bind(&spec).await.is_err());
    drop(l); // the file stays behind, as after a crash
    assert!(dir.0.join("milter.sock").exists());
    let (l, _) = milter::bind(&spec).await.unwrap();
    drop(l);
    milter::unbind(&spec);
    assert!(!dir.0.join("milter.sock").exists());
    std::fs::write(dir.0.join("plain"), "x").unwrap();
    let e = milter::bind(&format!("unix:{}", dir.0.join("plain").display()))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a socket"), "{e}");
    assert!(milter::bind("tcp:1").await.is_err());
}

/// The `mailstamp milter` binary: replaces a stale Unix socket, reloads on SIGHUP (keeping the
/// old map when the new one has a bad line), stops on SIGTERM and removes its socket.
#[tokio::test]
async fn the_binary_reloads_on_sighup_and_stops_on_sigterm() {
    let dir = TempDir::new("milter-bin");
    let sock = dir.0.join("m.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap()); // a stale socket file
    std::fs::write(dir.0.join("r.map"), "bob@b.example reject\n").unwrap();
    let cfg = dir.0.join("m.toml");
    std::fs::write(&cfg, "[maps]\nrecipient = \"r.map\"\n").unwrap();
    let log = dir.0.join("milter.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mailstamp"))
        .arg("--config")
        .arg(&cfg)
        .args(["milter", "--listen"])
        .arg(format!("unix:{}", sock.display()))
        .env_remove("MAILSTAMP_PRIVATE_KEY")
        .env_remove("MAILSTAMP_CONFIG")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let log_has = |s: &str, n: usize| {
        let end = std::time::Instant::now() + T;
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.matches(s).count() >= n {
                return text;
            }
            assert!(std::time::Instant::now() < end, "no {s:?} in:\n{text}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    log_has("listening on unix:", 1);
    let refused = async || {
        let mut c = TestConnection::configure()
            .exact_leading_space(true)
            .open_unix(&sock)
            .await
            .unwrap();
        let o = play_on(&mut c, &INBOUND, b"").await;
        let _ = c.close().await;
        matches!(o.stop, Some(("rcpt", Status::Reject { .. })))
    };
    assert!(refused().await);
    let kill = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
    };
    std::fs::write(dir.0.join("r.map"), "bob@b.example bounce\n").unwrap();
    kill("-HUP");
    let text = log_has("reload failed", 1);
    assert!(text.contains("r.map:1: "), "{text}");
    assert!(refused().await, "the old map stays in force");
    std::fs::write(dir.0.join("r.map"), "bob@b.example accept\n").unwrap();
    kill("-HUP");
    log_has("reloaded the config and maps", 1);
    assert!(!refused().await, "the new map is in force");
    kill("-TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    log_has("stopped", 1);
    assert!(!sock.exists(), "the socket is removed on exit");
}

#[tokio::test]
async fn provider_mode_accepts_rcpt_only_for_active_customer_domains() {
    let (a, registry, writer) = chain().await;
    let dir = TempDir::new("provider");
    let store_path = dir.0.join("state.sqlite");
    let store = mailstamp::store::Store::open(&store_path).unwrap();
    store.add_domain("b.example", "acme", 1).unwrap();
    store.set_active("b.example", 2).unwrap();
    store.add_domain("pending.example", "acme", 3).unwrap();
    drop(store);
    let toml = format!(
        "{}[store]\npath = \"{}\"\n[provider]\nenabled = true\nzone = \"provider.example\"\n",
        chain_toml(&a.endpoint(), registry, writer),
        store_path.display()
    );
    let m = start(&toml, &[], None).await;
    // Active domain: RCPT passes (the message then goes on to verification).
    let o = play(m.addr, &INBOUND, MSG.as_bytes()).await;
    assert!(!matches!(o.stop, Some(("rcpt", _))), "{o:?}");
    // Pending and unknown domains: refused at RCPT with a clear reply.
    for rcpt in ["carol@pending.example", "dave@elsewhere.example"] {
        let o = play(
            m.addr,
            &Smtp {
                rcpts: &[rcpt],
                ..INBOUND
            },
            MSG.as_bytes(),
        )
        .await;
        assert!(
            matches!(o.stop, Some(("rcpt", Status::Reject { .. }))),
            "{rcpt}: {o:?}"
        );
        assert!(o.reply().contains("not an active customer domain"), "{o:?}");
    }
}

/// Defect 1 of issue 10: a refusal to stamp that asking again cannot change (the From domain
/// does not authorise our writer, or the milter has no writer key) is permanent — `550`
/// naming the record to publish — not `451 cannot record the stamp now`, which the MTA retries
/// for days; with `on_stamp_error = "pass"` it passes unstamped, marked. The chain connection
/// is kept: the next message stamps at once.
#[tokio::test]
async fn a_permanent_stamping_refusal_is_a_5xx_not_chain_trouble() {
    let (a, registry, writer) = chain().await;
    // c.example pins another writer: ours is not authorised for it.
    let base = chain_toml(&a.endpoint(), registry, writer).replace(
        "[trust]\n",
        "[trust]\n\"c.example\" = [\"0x000000000000000000000000000000000000dEaD\"]\n",
    );
    let submit = Smtp {
        ip: "127.0.0.1",
        ..INBOUND
    };
    let foreign = MSG.replace("alice@a.example", "carol@c.example");
    let strict = start(
        &format!("{base}[milter]\ntrusted_networks = [\"127.0.0.0/8\"]\n"),
        &[],
        Some(&a),
    )
    .await;
    let o = play(strict.addr, &submit, foreign.as_bytes()).await;
    assert!(
        matches!(o.stop, Some(("eom", Status::Reject { .. }))),
        "{o:?}"
    );
    let reply = o.reply();
    assert!(
        reply.starts_with("550 5.7.1 mailstamp: refusing to stamp for `c.example`")
            && reply.contains("_mailstamp.c.example TXT"),
        "{reply}"
    );
    // The same milter stamps an authorised domain's message right after.
    let o = play(strict.addr, &submit, MSG.as_bytes()).await;
    assert!(
        o.stop.is_none() && o.header("Mail-Stamp").is_some(),
        "{o:?}"
    );

    // No writer key: 550 5.3.5, not 451.
    let keyless = start(
        &format!("{base}[milter]\ntrusted_networks = [\"127.0.0.0/8\"]\n"),
        &[],
        None,
    )
    .await;
    let o = play(keyless.addr, &submit, MSG.as_bytes()).await;
    assert!(
        o.reply()
            .starts_with("550 5.3.5 mailstamp: stamping needs a writer key"),
        "{o:?}"
    );

    // on_stamp_error = "pass": delivered unstamped, the refusal named in the mark.
    let lenient = start(
        &format!(
            "{base}[milter]\ntrusted_networks = [\"127.0.0.0/8\"]\non_stamp_error = \"pass\"\n"
        ),
        &[],
        Some(&a),
    )
    .await;
    let o = play(lenient.addr, &submit, foreign.as_bytes()).await;
    assert!(
        o.stop.is_none() && o.header("Mail-Stamp").is_none(),
        "{o:?}"
    );
    let mark = o.header("X-Mailstamp-Unstamped").unwrap_or_default();
    assert!(
        mark.starts_with(" refused: refusing to stamp for `c.example`"),
        "{mark}"
    );
}
