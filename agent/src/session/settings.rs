// SPDX-License-Identifier: GPL-3.0-or-later
//! What every message is judged with: the configuration, the loaded maps, the authserv-id,
//! the stamping and verifying context, and (with `[inbound] enabled`) the people store and the
//! DMARC authenticator. Built once at start and again on each reload, replaced as a whole;
//! a message keeps the settings it started with.

use std::path::Path;
use std::sync::Arc;

use crate::auth::Authenticator;
use crate::config::{Config, Overrides};
use crate::dns::Authority;
use crate::error::{Context, Result};
use crate::maps::Maps;
use crate::stamping::StampContext;
use crate::store::Store;
use crate::util::hostname;

/// Everything a message is judged with; replaced as a whole on reload.
#[derive(Clone)]
pub struct Settings {
    /// The agent configuration (checked), shared by every message under these settings.
    pub cfg: Arc<Config>,
    /// The loaded maps.
    pub maps: Maps,
    /// The authserv-id in use.
    pub authserv_id: String,
    /// Outbound: selection, writer check, provider mode.
    pub stamp: StampContext,
    /// Writer records and the trust map, for inbound checks (the same resolver as `stamp`'s).
    pub authority: Authority,
    /// The store holding authorised senders and the allowlist (`[inbound] enabled`).
    pub people: Option<Arc<Store>>,
    /// DMARC checks for the inbound folder decision (`[inbound] enabled`).
    pub authenticator: Option<Arc<Authenticator>>,
}

impl Settings {
    /// Builds settings from a checked configuration and its loaded maps.
    pub fn new(cfg: Config, maps: Maps) -> Result<Self> {
        let authserv_id = cfg.milter.authserv_id.clone().unwrap_or_else(hostname);
        let stamp = StampContext::from_config(&cfg)?;
        // Authorised senders and the allowlist (issue 5): the same file, their own connection
        // with a short busy timeout (super::message::open_people_store).
        let (people, authenticator) = if cfg.inbound.enabled {
            let store = super::message::open_people_store(&cfg.store).context(
                "inbound.enabled needs the store (store.path / --store); set inbound.enabled = false to go without",
            )?;
            let auth = Authenticator::new(&cfg.dns, &authserv_id)?;
            (Some(store), Some(Arc::new(auth)))
        } else {
            (None, None)
        };
        Ok(Self {
            cfg: Arc::new(cfg),
            maps,
            authserv_id,
            authority: stamp.authority.clone(),
            stamp,
            people,
            authenticator,
        })
    }

    /// Reads the configuration file (with `over` applied, checked) and the map files it names
    /// (relative to the file's directory).
    pub fn load(path: Option<&Path>, over: &Overrides) -> Result<Self> {
        let cfg = Config::load(path, over)?;
        let base = path
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let maps = Maps::load(&cfg.maps, &base)?;
        Self::new(cfg, maps)
    }
}
