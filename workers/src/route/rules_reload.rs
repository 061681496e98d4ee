//! Re-reading the rules file when it changes. A file that does not load is
//! refused and the previous rules keep routing.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use tokio_util::sync::CancellationToken;

use super::Router;
use crate::rules::{RuleSet, RulesError};

/// The rules file and what its last accepted version was.
pub(super) struct RulesSource {
    path: PathBuf,
    known_bots: HashSet<String>,
    modified: Mutex<Option<SystemTime>>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl RulesSource {
    /// Loads the rules at `path` (refusing unknown bots) and remembers
    /// which version was read.
    pub fn load(path: &Path, known: &HashSet<&str>) -> Result<(RuleSet, Self), RulesError> {
        let modified = modified(path);
        let rules = RuleSet::load(path, known)?;
        let source = Self {
            path: path.to_owned(),
            known_bots: known.iter().map(|b| (*b).to_owned()).collect(),
            modified: Mutex::new(modified),
        };
        Ok((rules, source))
    }
}

impl Router {
    /// Re-reads the rules file if it changed since the last accepted
    /// version. A file that does not load is refused and the current rules
    /// stay; the same file is not tried again until it changes.
    pub fn reload_rules_if_changed(&self) -> Result<bool, RulesError> {
        let Some(source) = &self.source else {
            return Ok(false);
        };
        let modified = modified(&source.path);
        {
            let mut last = source.modified.lock().expect("rules lock");
            if *last == modified {
                return Ok(false);
            }
            *last = modified;
        }
        let known: HashSet<&str> = source.known_bots.iter().map(String::as_str).collect();
        match RuleSet::load(&source.path, &known) {
            Ok(rules) => {
                self.rules.store(Arc::new(rules));
                metrics::counter!("switchboard_rules_reloads_total", "outcome" => "applied")
                    .increment(1);
                Ok(true)
            }
            Err(e) => {
                metrics::counter!("switchboard_rules_reloads_total", "outcome" => "refused")
                    .increment(1);
                Err(e)
            }
        }
    }

    /// Checks the rules file every `interval` until `stop` fires.
    pub fn spawn_rules_reloader(self: &Arc<Self>, interval: Duration, stop: CancellationToken) {
        if self.source.is_none() {
            return;
        }
        let router = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            while tokio::select! { _ = tick.tick() => true, _ = stop.cancelled() => false } {
                match router.reload_rules_if_changed() {
                    Ok(true) => tracing::info!("routing rules reloaded"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "new routing rules refused; the previous rules stay in force")
                    }
                }
            }
        });
    }
}
