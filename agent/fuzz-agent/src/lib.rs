// SPDX-License-Identifier: GPL-3.0-or-later
//! What the session targets (`milter`, `relay`) share: daemons made once per process from
//! config texts, with no chain, name server or next hop reachable (each points at port 1 of
//! the loopback, which refuses at once), and the one runtime their sessions run on.

use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use mailstamp::config::Overrides;
use mailstamp::session::{Daemon, Settings};

/// The part every config shares: nothing reachable, the store in `DIR` (this process's own
/// temporary directory), the example maps of contrib/ from `CONTRIB`.
const OFFLINE: &str = "[chain]\nrpc_url = \"http://127.0.0.1:1\"\ntimeout_secs = 1\n\
    registry = \"0x0000000000000000000000000000000000000001\"\n\
    [dns]\nnameservers = [\"127.0.0.1:1\"]\ntimeout_secs = 1\nattempts = 1\n\
    [store]\npath = \"DIR/state.sqlite\"\n\
    [relay]\nnext_hop = \"127.0.0.1:1\"\nnext_hop_timeout_secs = 1\nhostname = \"mx.b.example\"\n\
    idle_timeout_secs = 5\nmax_commands = 200\nmax_recipients = 20\n";

/// The configs a session input chooses from (its first byte, modulo their number).
pub const CONFIGS: [&str; 3] = [
    // Defaults: every verdict adds headers, a temperror is a tempfail.
    "[milter]\nauthserv_id = \"mx.b.example\"\n",
    // contrib's maps (connection, sender, recipient with per-address policies), trusted
    // networks and authenticated senders outbound, refusals for some verdicts.
    "[milter]\nauthserv_id = \"mx.b.example\"\ntrusted_networks = [\"127.0.0.0/8\", \"::1/128\"]\n\
     outbound_daemons = [\"ORIGINATING\"]\noutbound_authenticated = true\n\
     max_message_bytes = 65536\non_stamp_error = \"pass\"\non_temperror = \"pass\"\n\
     [milter.actions]\nspam = \"reject\"\ninvalid = \"quarantine\"\nunstamped = \"accept\"\n\
     [maps]\nconnection = \"CONTRIB/connection.map\"\nsender = \"CONTRIB/sender.map\"\n\
     recipient = \"CONTRIB/recipient.map\"\ndelimiter = \"+\"\n",
    // Strict: version 1 refused, discards and tempfails, a small size limit.
    "[milter]\nauthserv_id = \"mx.b.example\"\nmax_message_bytes = 4096\n\
     outbound_authenticated = true\n\
     [milter.actions]\nspam = \"discard\"\ninvalid = \"reject\"\nunstamped = \"tempfail\"\n\
     [verify]\nmin_version = 2\n",
];

/// This process's temporary directory (store, config files).
fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("mailstamp-fuzz-agent-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("the temporary directory is writable");
    d
}

/// One daemon per entry of [`CONFIGS`], made on first use.
static DAEMONS: LazyLock<Vec<Arc<Daemon>>> = LazyLock::new(|| {
    let dir = dir();
    let contrib = concat!(env!("CARGO_MANIFEST_DIR"), "/../../contrib");
    CONFIGS
        .iter()
        .enumerate()
        .map(|(i, extra)| {
            let text = format!("{OFFLINE}{extra}")
                .replace("DIR", &dir.display().to_string())
                .replace("CONTRIB", contrib);
            let path = dir.join(format!("config-{i}.toml"));
            std::fs::write(&path, text).expect("the config file is written");
            let settings = Settings::load(Some(&path), &Overrides::default())
                .unwrap_or_else(|e| panic!("fuzz config {i} does not load: {e:#}"));
            Arc::new(Daemon::new(settings, None, None))
        })
        .collect()
});

/// The daemon of config `choice` (modulo the number of configs).
pub fn daemon(choice: u8) -> Arc<Daemon> {
    DAEMONS[usize::from(choice) % DAEMONS.len()].clone()
}

/// The runtime every session input runs on (one thread, as libFuzzer runs one input at a
/// time; the blocking pool serves the store).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    });
    &RT
}
