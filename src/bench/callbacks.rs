//! `humanline bench callbacks`: how long a promise takes to become durable (with fsync, side by
//! side with the same commit without fsync), under concurrent committers, and how fast the
//! dialer finds the due promises among many. With `--postgres URL` the same commits are timed on
//! PostgreSQL too, beside SQLite in the same run. `--seed` writes a ledger full of overdue promises
//! for `bench/callback_recovery.py`.

use super::{loadavg, percentile, write_json};
use crate::callbacks::{CallbackLedger, LedgerStore, NewPromise, RetryPolicy, UnixMs};
use crate::storage::{PostgresStore, SqliteStore};
use anyhow::Context;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to measure (the command line's `bench callbacks` flags).
#[derive(Debug, Clone)]
pub struct CallbacksBench {
    /// Promises committed one after another, per durability setting.
    pub count: usize,
    /// Concurrent committers, each with its own connection.
    pub writers: usize,
    /// Pending promises in the ledger while the dialer's claim is timed.
    pub pending: usize,
    /// Folder for the benchmark databases (on a real disk: fsync is what is measured);
    /// `None`: bench/tmp-callbacks, removed afterwards.
    pub dir: Option<PathBuf>,
    /// Where to write the figures (JSON).
    pub out: PathBuf,
    /// Only write a ledger at this path holding `pending` overdue promises, then exit.
    pub seed: Option<PathBuf>,
    /// Also time the commits on this PostgreSQL database (its ledger tables are created; the
    /// promises written are tagged with the run and left there).
    pub postgres: Option<String>,
}

fn now_ms() -> UnixMs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn promise(i: usize, tag: &str) -> NewPromise {
    NewPromise {
        number: format!("+3120{:07}", i % 10_000_000),
        not_before: 0,
        reason: "bench".into(),
        context: json!({"said": ["I want to talk to a human"], "language": "en"}),
        automatic: false,
        key: format!("bench-{tag}-{i}"),
        call_id: format!("bench-{tag}-{i}"),
    }
}

/// Milliseconds, as summary figures.
fn summary(ms: &[f64]) -> serde_json::Value {
    let at = |p: f64| percentile(ms, p).map(round3);
    json!({"n": ms.len(), "p50_ms": at(50.0), "p99_ms": at(99.0), "max_ms": at(100.0)})
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn commit_many<S: LedgerStore>(
    ledger: &mut CallbackLedger<S>,
    range: std::ops::Range<usize>,
    tag: &str,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(range.len());
    for i in range {
        let p = promise(i, tag);
        let t = Instant::now();
        ledger
            .promise(&p, now_ms())
            .context("committing a promise")?;
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

/// `pending` promises, made over the past `pending` seconds: promise i is i seconds younger
/// than the first, so the first is the most overdue.
fn seed(db: &Path, pending: usize) -> anyhow::Result<()> {
    // Seeding is set-up, not the measurement: no fsync per promise (one at the end).
    let mut ledger = CallbackLedger::new(
        SqliteStore::open_without_fsync(db).with_context(|| format!("opening {}", db.display()))?,
        RetryPolicy::default(),
    );
    let start = now_ms() - pending as i64 * 1000;
    for i in 0..pending {
        ledger.promise(&promise(i, "seed"), start + i as i64 * 1000)?;
    }
    drop(ledger);
    // Reopening with the server's settings checkpoints and fsyncs what was written.
    SqliteStore::open(db).with_context(|| format!("reopening {}", db.display()))?;
    Ok(())
}

pub fn run(args: CallbacksBench) -> anyhow::Result<()> {
    if let Some(db) = &args.seed {
        anyhow::ensure!(
            !db.exists(),
            "{} exists; --seed writes a new ledger",
            db.display()
        );
        seed(db, args.pending)?;
        eprintln!(
            "bench callbacks: {} overdue promises in {}",
            args.pending,
            db.display()
        );
        return Ok(());
    }
    let owned = args.dir.is_none();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("bench/tmp-callbacks"));
    if owned && dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = measure(&args, &dir);
    if owned {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = result?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    write_json(&args.out, &report)?;
    eprintln!("bench callbacks: written to {}", args.out.display());
    Ok(())
}

fn measure(args: &CallbacksBench, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let count = args.count.max(1);
    let policy = RetryPolicy::default();
    let load_at_start = loadavg();

    eprintln!("bench callbacks: {count} sequential commits with fsync");
    let mut full = CallbackLedger::new(SqliteStore::open(&dir.join("full.db"))?, policy);
    let with_fsync = commit_many(&mut full, 0..count, "full")?;
    drop(full);

    eprintln!("bench callbacks: {count} sequential commits without fsync (baseline)");
    let mut off = CallbackLedger::new(
        SqliteStore::open_without_fsync(&dir.join("nofsync.db"))?,
        policy,
    );
    let without_fsync = commit_many(&mut off, 0..count, "off")?;
    drop(off);

    let writers = args.writers.max(1);
    eprintln!("bench callbacks: {count} commits with fsync from {writers} committers at once");
    let shared_db = dir.join("concurrent.db");
    // Created (and migrated) once, before the committers race.
    drop(SqliteStore::open(&shared_db)?);
    let concurrent = commit_concurrently(count, writers, "conc", || {
        Ok(CallbackLedger::new(SqliteStore::open(&shared_db)?, policy))
    })?;
    let postgres = match &args.postgres {
        Some(url) => Some(measure_postgres(url, count, writers)?),
        None => None,
    };

    let pending = args.pending;
    eprintln!("bench callbacks: claiming due promises among {pending} pending");
    let claim_db = dir.join("pending.db");
    seed(&claim_db, pending)?;
    let mut ledger = CallbackLedger::new(SqliteStore::open(&claim_db)?, policy);
    // What the dialer does each tick with one free agent: claim the most overdue one.
    let rounds = 200.min(pending);
    let mut claim = Vec::with_capacity(rounds);
    let mut in_order = true;
    let mut last_created = i64::MIN;
    for _ in 0..rounds {
        let t = Instant::now();
        let got = ledger.claim_due(now_ms(), 1)?;
        claim.push(t.elapsed().as_secs_f64() * 1000.0);
        if let Some((p, _)) = got.first() {
            in_order &= p.created_at >= last_created;
            last_created = p.created_at;
        }
    }
    let t = Instant::now();
    let recovered = ledger.recover(now_ms())?;
    let recover_ms = t.elapsed().as_secs_f64() * 1000.0;

    let p50 = |v: &[f64]| percentile(v, 50.0).unwrap_or(0.0);
    let ratio = p50(&with_fsync) / p50(&without_fsync).max(1e-6);
    let report = json!({
        "command": format!("humanline bench callbacks --count {count} --writers {writers} --pending {pending}{}",
            if args.postgres.is_some() { " --postgres URL" } else { "" }),
        "disk": dir.canonicalize().unwrap_or(dir.to_path_buf()).display().to_string(),
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
                    "loadavg_at_start": load_at_start, "loadavg_at_end": loadavg()},
        "commit_with_fsync": summary(&with_fsync),
        "commit_without_fsync_baseline": summary(&without_fsync),
        "fsync_cost_ratio_p50": round3(ratio),
        "commit_with_fsync_concurrent": {"writers": writers, "latency": summary(&concurrent)},
        "claim_most_overdue": {"pending": pending, "latency": summary(&claim),
                               "most_overdue_first": in_order},
        "recover_after_crash": {"open_attempts_closed": recovered, "ms": round3(recover_ms)},
        "postgres": postgres,
    });
    Ok(report)
}

/// `count` commits split over `writers` threads at once, each with its own ledger from `open`.
fn commit_concurrently<S: LedgerStore>(
    count: usize,
    writers: usize,
    tag: &str,
    open: impl Fn() -> anyhow::Result<CallbackLedger<S>> + Sync,
) -> anyhow::Result<Vec<f64>> {
    let per = count.div_ceil(writers);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let open = &open;
                s.spawn(move || -> anyhow::Result<Vec<f64>> {
                    let mut l = open()?;
                    commit_many(&mut l, w * per..((w + 1) * per).min(count), tag)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            let part = h
                .join()
                .map_err(|_| anyhow::anyhow!("a committer panicked"))??;
            all.extend(part);
        }
        Ok(all)
    })
}

/// The same commits on PostgreSQL: with `synchronous_commit = on` (what the server runs), and
/// off as the baseline (the commit returns before the server flushes its WAL).
fn measure_postgres(url: &str, count: usize, writers: usize) -> anyhow::Result<serde_json::Value> {
    let policy = RetryPolicy::default();
    // Keys unique to this run: a rerun on the same database commits new promises too.
    let run = format!("{:x}", now_ms());
    let open = || -> anyhow::Result<PostgresStore> {
        PostgresStore::connect(url, "bench").context("connecting to PostgreSQL")
    };
    eprintln!("bench callbacks: {count} sequential commits on PostgreSQL");
    let mut on = CallbackLedger::new(open()?, policy);
    let with_flush = commit_many(&mut on, 0..count, &format!("pg-{run}"))?;
    drop(on);
    eprintln!("bench callbacks: {count} sequential commits on PostgreSQL without flush (baseline)");
    let mut off = CallbackLedger::new(open()?.without_flush()?, policy);
    let without_flush = commit_many(&mut off, 0..count, &format!("pg-off-{run}"))?;
    drop(off);
    eprintln!("bench callbacks: {count} commits on PostgreSQL from {writers} committers at once");
    let concurrent = commit_concurrently(count, writers, &format!("pg-conc-{run}"), || {
        Ok(CallbackLedger::new(open()?, policy))
    })?;
    Ok(json!({
        "commit": summary(&with_flush),
        "commit_without_flush_baseline": summary(&without_flush),
        "commit_concurrent": {"writers": writers, "latency": summary(&concurrent)},
    }))
}
