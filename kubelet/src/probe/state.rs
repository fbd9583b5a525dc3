//! A probe's timing and thresholds, as upstream's prober worker: pure, fed
//! one result at a time.

use std::time::Duration;

use k8s_openapi::api::core::v1::Probe;

/// Which of a container's probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    Liveness,
    Readiness,
    Startup,
}

impl ProbeKind {
    pub fn name(self) -> &'static str {
        match self {
            ProbeKind::Liveness => "liveness",
            ProbeKind::Readiness => "readiness",
            ProbeKind::Startup => "startup",
        }
    }
}

/// A probe's timing with upstream's defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn positive(v: Option<i32>, default: u32) -> u32 {
    v.and_then(|v| u32::try_from(v).ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

impl Settings {
    pub fn of(kind: ProbeKind, probe: &Probe) -> Self {
        let success_threshold = match kind {
            // Validation demands 1 for these; a container is killed on the
            // first reported failure, so more would never be reached.
            ProbeKind::Liveness | ProbeKind::Startup => 1,
            ProbeKind::Readiness => positive(probe.success_threshold, 1),
        };
        Settings {
            initial_delay: Duration::from_secs(
                probe
                    .initial_delay_seconds
                    .and_then(|v| u64::try_from(v).ok())
                    .unwrap_or(0),
            ),
            period: Duration::from_secs(positive(probe.period_seconds, 10).into()),
            timeout: Duration::from_secs(positive(probe.timeout_seconds, 1).into()),
            success_threshold,
            failure_threshold: positive(probe.failure_threshold, 3),
        }
    }
}

/// One probe of one container instance.
#[derive(Clone, Debug)]
pub struct ProbeState {
    pub kind: ProbeKind,
    pub settings: Settings,
    /// The result reported so far; `None` before any for startup probes.
    reported: Option<bool>,
    last: Option<bool>,
    run: u32,
    on_hold: bool,
}

impl ProbeState {
    pub fn new(kind: ProbeKind, settings: Settings) -> Self {
        // Upstream's initial values: live until shown otherwise, not ready
        // until shown ready, not started until the startup probe passes.
        let reported = match kind {
            ProbeKind::Liveness => Some(true),
            ProbeKind::Readiness => Some(false),
            ProbeKind::Startup => None,
        };
        Self {
            kind,
            settings,
            reported,
            last: None,
            run: 0,
            on_hold: false,
        }
    }

    pub fn reported(&self) -> Option<bool> {
        self.reported
    }

    /// Whether the probe stopped: a liveness or startup failure waits for
    /// the container to be restarted, which gives it a new state.
    pub fn on_hold(&self) -> bool {
        self.on_hold
    }

    /// Counts one result; returns it once it has held for its threshold
    /// (and at every later run while it holds).
    pub fn record(&mut self, success: bool) -> Option<bool> {
        if self.on_hold {
            return None;
        }
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let threshold = if success {
            self.settings.success_threshold
        } else {
            self.settings.failure_threshold
        };
        if self.run < threshold {
            return None;
        }
        self.reported = Some(success);
        if !success && self.kind != ProbeKind::Readiness {
            self.on_hold = true;
            self.run = 0;
        }
        Some(success)
    }
}
