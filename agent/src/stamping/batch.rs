// SPDX-License-Identifier: GPL-3.0-or-later
//! `mailstamp stamp --batch`: many messages, one Merkle root, one `anchor` transaction
//! (docs/PROTOCOL.md §5a), durable across a crash — the stamped messages are spooled and the
//! batch journalled before the anchor is sent, moved to the output directory only after it is
//! mined; [`resume_batches`] finishes what a crash left, anchoring each batch at most once.

use alloy::primitives::{B256, FixedBytes};
use mailstamp_core::{Envelope, insert_header};

use crate::chain::{Chain, Recorded};
use crate::error::{Context, Result, bail};
use crate::store::{BatchRow, Store};
use crate::util::{fault, now};

use super::{AnchorState, StampContext, anchor_state, check_and_prepare, writer_of};

/// One message given to a batch.
#[derive(Debug, Clone)]
pub struct BatchInput {
    /// A name for it (the file name in the output directory).
    pub name: String,
    /// The message.
    pub raw: Vec<u8>,
    /// Its envelope.
    pub env: Envelope,
}

/// What happened to a batch.
#[derive(Debug, Clone)]
pub struct BatchOutcome {
    /// The batch id (the anchor's key).
    pub batch: B256,
    /// How many messages it holds.
    pub size: u32,
    /// The anchoring transaction; `None` when it was found already on chain (a resumed batch).
    pub recorded: Option<Recorded>,
    /// Messages refused before batching, with why.
    pub refused: Vec<(String, String)>,
}

/// Stamps messages in batched mode (docs/PROTOCOL.md §5a): every message is checked and
/// prepared as for a direct stamp, one Merkle tree is built over their commitments, each header
/// gets its proof, and ONE `anchor` transaction records the root. Durable across a crash: the
/// stamped messages are written to a spool directory and the batch journalled in `store`
/// before the anchor is sent, and moved to `out_dir` only after it is mined; [`resume_batches`]
/// finishes what a crash left, anchoring each batch at most once.
pub async fn stamp_batch(
    chain: &Chain,
    ctx: &StampContext,
    store: &Store,
    inputs: Vec<BatchInput>,
    out_dir: &std::path::Path,
) -> Result<BatchOutcome> {
    let writer = writer_of(chain)?;
    let chain_ref = chain.chain_ref(writer);
    let mut prepared = Vec::new();
    let mut refused = Vec::new();
    for i in inputs {
        match check_and_prepare(ctx, writer, &chain_ref, &i.raw, &i.env).await {
            Ok(p) => prepared.push((i, p)),
            Err(e) => refused.push((i.name, format!("{e:#}"))),
        }
    }
    let mut batch_id = [0u8; 32];
    getrandom::fill(&mut batch_id)
        .map_err(|e| crate::error::err!("the system random generator failed: {e}"))?;
    let mut stamps: Vec<mailstamp_core::Prepared> =
        prepared.iter().map(|(_, p)| p.clone()).collect();
    let Some(root) = mailstamp_core::stamp::into_batch(&mut stamps, batch_id) else {
        bail!("nothing to stamp: every message was refused");
    };
    let size = u32::try_from(stamps.len()).context("batch too large")?;
    let batch = B256::from(batch_id);
    let spool = out_dir.join(format!(".mailstamp-batch-{batch}"));
    std::fs::create_dir_all(&spool)
        .with_context(|| format!("cannot create {}", spool.display()))?;
    for ((input, _), p) in prepared.iter().zip(&stamps) {
        let path = spool.join(&input.name);
        std::fs::write(&path, insert_header(&input.raw, &p.header))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let row = BatchRow {
        batch_id: batch.to_string(),
        root: format!("0x{}", hex::encode(mailstamp_core::merkle::short(&root))),
        size,
        spool: spool.to_string_lossy().into_owned(),
        out_dir: out_dir.to_string_lossy().into_owned(),
        tx: None,
    };
    store.add_batch(&row, now())?;
    fault("before-anchor");
    let recorded = finish_batch(chain, store, &row).await?;
    Ok(BatchOutcome {
        batch,
        size,
        recorded,
        refused,
    })
}

/// Anchors a journalled batch unless its anchor is already on chain, then moves its messages
/// to their output directory and closes the journal entry. Safe to repeat.
pub async fn finish_batch(
    chain: &Chain,
    store: &Store,
    row: &BatchRow,
) -> Result<Option<Recorded>> {
    let writer = chain
        .writer
        .context("finishing a batch needs the writer key")?;
    let batch: B256 = row.batch_id.parse().context("journal: bad batch id")?;
    let root: FixedBytes<24> = row.root.parse().context("journal: bad root")?;
    let recorded = match anchor_state(chain, writer, batch, root.0).await? {
        AnchorState::Ours => None,
        AnchorState::Absent => Some(chain.anchor(batch, root, row.size).await?),
    };
    fault("after-anchor");
    let spool = std::path::Path::new(&row.spool);
    let out = std::path::Path::new(&row.out_dir);
    if spool.exists() {
        for entry in
            std::fs::read_dir(spool).with_context(|| format!("cannot list {}", spool.display()))?
        {
            let entry = entry?;
            std::fs::rename(entry.path(), out.join(entry.file_name())).with_context(|| {
                format!(
                    "cannot move {} to {}",
                    entry.path().display(),
                    out.display()
                )
            })?;
        }
        std::fs::remove_dir(spool).with_context(|| format!("cannot remove {}", spool.display()))?;
    }
    store.finish_batch(
        &row.batch_id,
        recorded.as_ref().map(|r| r.tx.to_string()).as_deref(),
    )?;
    Ok(recorded)
}

/// Finishes every batch a crash left pending: anchors what is not on chain yet (once) and
/// delivers the spooled messages.
pub async fn resume_batches(
    chain: &Chain,
    store: &Store,
) -> Result<Vec<(BatchRow, Option<Recorded>)>> {
    let mut done = Vec::new();
    for row in store.pending_batches()? {
        let r = finish_batch(chain, store, &row).await?;
        done.push((row, r));
    }
    Ok(done)
}
