//! Metrics per priority class of an upstream's wait queue (`priority`): waits and
//! rejections, resolved once per class and generation (the queue depth and
//! in-flight count per class are pool gauges, read at scrape time by `pools`).
//! Labels are bounded: `class` is one of at most eight configured names; fair
//! share has no per-consumer series.

use std::sync::OnceLock;

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, Registry};

use crate::gateway::Reject;

/// Most classes an upstream can have (the config's limit).
const MAX_CLASSES: usize = 8;

/// The class series, registered once.
#[derive(Clone)]
pub(super) struct ClassFamilies {
    wait: HistogramVec,
    rejected: IntCounterVec,
}

impl ClassFamilies {
    pub(super) fn new(r: &Registry) -> prometheus::Result<ClassFamilies> {
        Ok(ClassFamilies {
            wait: super::histogram_vec(
                r,
                "modelgate_class_queue_wait_seconds",
                "Time requests of a priority class waited for an in-flight slot.",
                &["upstream", "class"],
            )?,
            rejected: super::counter_vec(
                r,
                "modelgate_class_rejected_total",
                "Requests of a priority class refused by the queue, by reason (overloaded, queue_timeout).",
                &["upstream", "class", "reason"],
            )?,
        })
    }
}

/// One class's handles for the request path.
pub(crate) struct ClassMetrics {
    wait: Histogram,
    overloaded: IntCounter,
    queue_timeout: IntCounter,
}

impl ClassMetrics {
    pub(crate) fn queue_wait(&self, seconds: f64) {
        self.wait.observe(seconds);
    }

    /// Counts a refusal by the queue; other reasons are not the class's doing.
    pub(crate) fn rejected(&self, r: Reject) {
        match r {
            Reject::Overloaded => self.overloaded.inc(),
            Reject::QueueTimeout => self.queue_timeout.inc(),
            _ => {}
        }
    }
}

/// The class handles of one upstream, resolved on first use per class and
/// config generation (then no label lookup per request).
pub(super) struct ClassHandles {
    families: ClassFamilies,
    upstream: Box<str>,
    slots: [OnceLock<ClassMetrics>; MAX_CLASSES],
}

impl ClassHandles {
    pub(super) fn new(families: &ClassFamilies, upstream: &str) -> ClassHandles {
        ClassHandles {
            families: families.clone(),
            upstream: upstream.into(),
            slots: Default::default(),
        }
    }

    /// The handles of class number `i`, named `name`.
    pub(super) fn get(&self, i: u8, name: &str) -> Option<&ClassMetrics> {
        let slot = self.slots.get(usize::from(i))?;
        Some(slot.get_or_init(|| {
            let f = &self.families;
            let up = &*self.upstream;
            ClassMetrics {
                wait: f.wait.with_label_values(&[up, name]),
                overloaded: f.rejected.with_label_values(&[up, name, "overloaded"]),
                queue_timeout: f.rejected.with_label_values(&[up, name, "queue_timeout"]),
            }
        }))
    }
}
