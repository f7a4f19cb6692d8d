// SPDX-License-Identifier: GPL-3.0-or-later
//! The MTA side of the milter benches: a message split as Postfix hands it to a milter, one
//! SMTP session played with indymilter-test (connect … EOM, timed), and passes of many
//! sessions, sequential or at once. Included with `#[path]` by `milter_load` and
//! `hop_latency`.

use std::ffi::CString;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indymilter_test::{EomAction, MacroStage, Status, TestConnection};

/// One message as an MTA hands it to a milter: header fields (name, value after the colon
/// with LF-joined folds) and the CRLF body.
pub struct Prepared {
    pub fields: Vec<(CString, CString)>,
    pub body: Vec<u8>,
}

/// Splits a message as Postfix does for a milter (as tests/it/milter.rs `split`).
pub fn prepare(raw: &[u8]) -> Prepared {
    let (fields, body) = super::harness::milter_split(raw);
    let cs = |v: Vec<u8>| CString::new(v).expect("no NUL in a header field");
    Prepared {
        fields: fields
            .into_iter()
            .map(|(n, v)| (cs(n.into_bytes()), cs(v)))
            .collect(),
        body,
    }
}

/// Where the milter listens.
#[derive(Clone)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// Who sends: the client's address, MAIL FROM and RCPT TO.
#[derive(Clone)]
pub struct Envelope {
    pub ip: IpAddr,
    pub sender: String,
    pub rcpts: Vec<String>,
}

/// Plays one SMTP session with one message; returns the time from connect to the EOM reply
/// and the end-of-message actions.
pub async fn play(
    to: &Target,
    m: &Prepared,
    env: &Envelope,
) -> Result<(Duration, Vec<EomAction>), String> {
    fn go(stage: &str, s: Result<Status, indymilter_test::TestError>) -> Result<(), String> {
        match s {
            Ok(Status::Continue) => Ok(()),
            other => Err(format!("{stage}: {other:?}")),
        }
    }
    let t = Instant::now();
    let b = TestConnection::configure().exact_leading_space(true);
    let mut c = match to {
        Target::Tcp(a) => b.open_tcp(*a).await,
        Target::Unix(p) => b.open_unix(p).await,
    }
    .map_err(|e| format!("open: {e:?}"))?;
    go("connect", c.connect("mx.a.example", (env.ip, 25000)).await)?;
    go("helo", c.helo("mx.a.example").await)?;
    go("mail", c.mail([format!("<{}>", env.sender)]).await)?;
    for r in &env.rcpts {
        go("rcpt", c.rcpt([format!("<{r}>")]).await)?;
    }
    for (n, v) in &m.fields {
        go("header", c.header(n.as_c_str(), v.as_c_str()).await)?;
    }
    go("eoh", c.eoh().await)?;
    for chunk in m.body.chunks(65535) {
        go("body", c.body(chunk.to_vec()).await)?;
    }
    c.macros(MacroStage::Eom, [("i", "QID1")])
        .await
        .map_err(|e| format!("macros: {e:?}"))?;
    let (actions, status) = c.eom().await.map_err(|e| format!("eom: {e:?}"))?;
    let took = t.elapsed();
    let _ = c.close().await;
    if status != Status::Continue && status != Status::Accept {
        return Err(format!("eom: {status:?}"));
    }
    Ok((took, actions.actions))
}

/// The value of the header field `name` the milter added or inserted.
pub fn added(actions: &[EomAction], name: &str) -> Option<String> {
    actions.iter().find_map(|a| match a {
        EomAction::AddHeader { name: n, value }
        | EomAction::InsertHeader { name: n, value, .. }
            if n.as_bytes() == name.as_bytes() =>
        {
            Some(value.to_string_lossy().into_owned())
        }
        _ => None,
    })
}

/// The outcome of one pass: per-message latency, the wall time, each message's actions.
pub struct Pass {
    pub lat: Vec<Duration>,
    pub wall: Duration,
    pub actions: Vec<Vec<EomAction>>,
}

/// Plays every message of `msgs` with `env`, `sessions` at once (1: one after the other);
/// panics on the first message the milter did not take.
pub async fn pass(to: &Target, msgs: &Arc<Vec<Prepared>>, sessions: usize, env: &Envelope) -> Pass {
    let t = Instant::now();
    let mut out = Vec::with_capacity(msgs.len());
    if sessions <= 1 {
        for m in msgs.iter() {
            out.push(play(to, m, env).await);
        }
    } else {
        let sem = Arc::new(tokio::sync::Semaphore::new(sessions));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..msgs.len() {
            let (sem, msgs, to, env) = (sem.clone(), msgs.clone(), to.clone(), env.clone());
            set.spawn(async move {
                let _p = sem.acquire_owned().await.expect("semaphore");
                (i, play(&to, &msgs[i], &env).await)
            });
        }
        let mut r = Vec::with_capacity(msgs.len());
        while let Some(j) = set.join_next().await {
            r.push(j.expect("task"));
        }
        r.sort_by_key(|(i, _)| *i);
        out = r.into_iter().map(|(_, x)| x).collect();
    }
    let wall = t.elapsed();
    let mut lat = Vec::with_capacity(out.len());
    let mut actions = Vec::with_capacity(out.len());
    for (i, r) in out.into_iter().enumerate() {
        let (d, a) = r.unwrap_or_else(|e| panic!("message {i}: {e}"));
        lat.push(d);
        actions.push(a);
    }
    Pass { lat, wall, actions }
}

/// One table row: messages, p50, p99, max (ms), messages/s, of per-message latencies `lat`
/// over `wall`.
pub fn row(name: &str, lat: &[Duration], wall: Duration) -> String {
    let mut v = lat.to_vec();
    v.sort();
    let q = |f: f64| v[((v.len() as f64 * f).ceil() as usize).clamp(1, v.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{name:<34} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>9.1}",
        v.len(),
        ms(q(0.50)),
        ms(q(0.99)),
        ms(*v.last().expect("messages")),
        v.len() as f64 / wall.as_secs_f64()
    )
}
