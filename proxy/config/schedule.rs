//! Reading the wait queue's scheduling keys of an upstream: `priority` (classes
//! served highest first, with a starvation bound, per-class queues and share caps)
//! and `fair_share` (consumers served by least attained service).

use std::time::Duration;

use toml::de::DeValue;

use super::reader::{header_key, Ctx, Field, TableReader};
use super::types::Queue;
use super::upstream::{read_queue, DEFAULT_QUEUE};

/// Most priority classes an upstream may name (the queue keeps fixed per-class arrays).
pub const MAX_CLASSES: usize = 8;
/// Default of `priority.max_wait_behind`.
pub(crate) const DEFAULT_MAX_WAIT_BEHIND: Duration = Duration::from_secs(10);
/// The class a request without the header (or with an unknown one) gets, unless
/// `priority.default` names another.
pub(crate) const DEFAULT_CLASS: &str = "default";

const PRIORITY_EXAMPLE: &str =
    "{ header = \"x-priority\", classes = [\"interactive\", \"default\", \"batch\"] }";
const CLASS_EXAMPLE: &str =
    "\"batch\" or { name = \"batch\", queue = { size = 64, timeout = \"5m\" }, max_share = 50 }";

/// `priority = { header, classes, default, max_wait_behind }` on an upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Priority {
    /// The request header naming the class (lower-case).
    pub header: String,
    /// Highest first; at most [`MAX_CLASSES`].
    pub classes: Vec<PriorityClass>,
    /// Index in `classes` of the class for requests without (or with an unknown) header.
    pub default: usize,
    /// A request waiting this long is served before every request that has not.
    pub max_wait_behind: Duration,
}

/// One class of `priority.classes`.
#[derive(Debug, Clone, PartialEq)]
pub struct PriorityClass {
    pub name: String,
    /// This class's queue: at most `size` of its requests wait (within the
    /// upstream's `queue.size` for all classes), each for at most `timeout`.
    /// Each key defaults to the upstream's `queue`.
    pub queue: Queue,
    /// `max_share`: at most this percent (1-100) of the upstream's in-flight slots
    /// run requests of this class; `None`: no cap.
    pub max_share: Option<u8>,
}

/// `fair_share`: whose requests the queue serves fairly against each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FairShare {
    /// The consumer the route's `auth` accepted (API key name or JWT `sub`).
    Consumer,
    /// The value of this request header (lower-case name).
    Header(String),
}

/// `priority` of one upstream; `queue` is the upstream's (the per-class defaults).
pub(crate) fn read_priority(
    cx: &mut Ctx<'_>,
    f: &Field<'_, '_>,
    queue: Option<Queue>,
) -> Option<Priority> {
    let mut t = cx.table(f, PRIORITY_EXAMPLE)?;
    let header = t
        .require(cx, "header", "header = \"x-priority\"")
        .and_then(|f| header_name(cx, &f));
    let classes_f = t.require(
        cx,
        "classes",
        "classes = [\"interactive\", \"default\", \"batch\"]",
    );
    let classes = classes_f.and_then(|f| read_classes(cx, &f, queue.unwrap_or(DEFAULT_QUEUE)));
    let default = match (t.take("default"), &classes) {
        (Some(f), Some(list)) => {
            let name = cx.nonempty(&f, "a class name such as \"default\"")?;
            // As header values are matched: case-insensitively.
            let at = list.iter().position(|c| c.name.eq_ignore_ascii_case(name));
            if at.is_none() {
                cx.error(
                    &f.span(),
                    &f.path,
                    format!(
                        "{name:?} is not one of the classes; name one of {}",
                        names(list)
                    ),
                );
            }
            at
        }
        (Some(f), None) => {
            cx.nonempty(&f, "a class name such as \"default\"");
            None
        }
        (None, Some(list)) => {
            let at = list
                .iter()
                .position(|c| c.name.eq_ignore_ascii_case(DEFAULT_CLASS));
            if at.is_none() {
                cx.error(
                    &t.span(),
                    t.path(),
                    format!(
                        "no class is named \"default\": add default = \"NAME\" naming the class \
                         of requests without the header (one of {})",
                        names(list)
                    ),
                );
            }
            at
        }
        (None, None) => None,
    };
    let max_wait_behind = t
        .take("max_wait_behind")
        .map_or(Some(DEFAULT_MAX_WAIT_BEHIND), |f| cx.duration(&f, false));
    t.finish(cx);
    Some(Priority {
        header: header?,
        classes: classes?,
        default: default?,
        max_wait_behind: max_wait_behind?,
    })
}

fn names(list: &[PriorityClass]) -> String {
    let n: Vec<String> = list.iter().map(|c| format!("{:?}", c.name)).collect();
    n.join(", ")
}

fn header_name(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<String> {
    let name = match f.value.get_ref() {
        DeValue::String(s) => header_key(&format!("header:{s}")),
        _ => None,
    };
    if name.is_none() {
        cx.expected(
            f,
            "a header name such as \"x-priority\"",
            "letters, digits and !#$%&'*+-.^_`|~ only",
        );
    }
    name
}

fn read_classes(cx: &mut Ctx<'_>, f: &Field<'_, '_>, queue: Queue) -> Option<Vec<PriorityClass>> {
    let items = cx.array(f, "[\"interactive\", \"default\", \"batch\"]")?;
    if items.is_empty() || items.len() > MAX_CLASSES {
        cx.error(
            &f.span(),
            &f.path,
            format!("name 1 to {MAX_CLASSES} classes, highest first, e.g. [\"interactive\", \"default\", \"batch\"]"),
        );
        return None;
    }
    let mut out: Option<Vec<PriorityClass>> = Some(Vec::with_capacity(items.len()));
    let mut seen: Vec<String> = Vec::new();
    for item in &items {
        let class = read_class(cx, item, queue);
        if let Some(c) = &class {
            // Header values pick a class case-insensitively: names differing only in
            // case would leave all but the first unreachable.
            match seen.iter().find(|s| s.eq_ignore_ascii_case(&c.name)) {
                Some(s) if *s == c.name => cx.error(
                    &item.span(),
                    &item.path,
                    format!("{:?} is listed twice; remove one", c.name),
                ),
                Some(s) => cx.error(
                    &item.span(),
                    &item.path,
                    format!(
                        "{:?} differs from {s:?} only in case, and header values match classes \
                         case-insensitively, so it could never be chosen; rename or remove one",
                        c.name
                    ),
                ),
                None => {}
            }
            seen.push(c.name.clone());
        }
        out = out.zip(class).map(|(mut v, c)| {
            v.push(c);
            v
        });
    }
    out
}

fn read_class(cx: &mut Ctx<'_>, f: &Field<'_, '_>, queue: Queue) -> Option<PriorityClass> {
    if let DeValue::String(_) = f.value.get_ref() {
        return class_name(cx, f).map(|name| PriorityClass {
            name,
            queue,
            max_share: None,
        });
    }
    let mut t = match f.value.get_ref() {
        DeValue::Table(t) => TableReader::new(t, f.span(), f.path.clone()),
        _ => {
            cx.expected(f, &format!("a class: {CLASS_EXAMPLE}"), "");
            return None;
        }
    };
    let name = t
        .require(cx, "name", "name = \"batch\"")
        .and_then(|f| class_name(cx, &f));
    let class_queue = t
        .take("queue")
        .map_or(Some(queue), |f| read_queue(cx, &f, queue));
    let max_share = match t.take("max_share") {
        Some(f) => cx
            .uint(
                &f,
                1,
                100,
                "percent of the upstream's in-flight slots this class may use at most",
            )
            .map(Some),
        None => Some(None),
    };
    t.finish(cx);
    Some(PriorityClass {
        name: name?,
        queue: class_queue?,
        max_share: max_share?,
    })
}

fn class_name(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<String> {
    let s = cx.nonempty(f, "a class name such as \"batch\"")?;
    let ok = s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        cx.expected(
            f,
            "a class name such as \"batch\"",
            "up to 64 letters, digits, '-', '_' or '.' (it is also a metric label)",
        );
        return None;
    }
    Some(s.to_string())
}

/// `fair_share = "consumer"` or `"header:NAME"`.
pub(crate) fn read_fair_share(cx: &mut Ctx<'_>, f: &Field<'_, '_>) -> Option<FairShare> {
    cx.word_or_header(
        f,
        ("consumer", FairShare::Consumer),
        FairShare::Header,
        r#"e.g. "header:x-tenant"; "consumer" is the client a route's auth accepted"#,
    )
}

/// Warns about scheduling that can have no effect: without an in-flight cap nothing
/// ever waits, and a share cap needs slots to take a share of.
pub(crate) fn check_caps(
    cx: &mut Ctx<'_>,
    t_path: &str,
    priority: Option<(&Field<'_, '_>, &Priority)>,
    fair_share: Option<&Field<'_, '_>>,
    capped: bool,
) {
    if capped {
        return;
    }
    if let Some((f, p)) = priority {
        if p.classes.iter().any(|c| c.max_share.is_some()) {
            cx.error(
                &f.span(),
                &f.path,
                format!(
                    "max_share is a share of in-flight slots, and {t_path} has no cap; \
                     set max_inflight = N or \"auto\""
                ),
            );
        } else {
            cx.warn(
                &f.span(),
                &f.path,
                "has no effect without max_inflight: requests never wait, so there is no queue to order",
            );
        }
    }
    if let Some(f) = fair_share {
        cx.warn(
            &f.span(),
            &f.path,
            "has no effect without max_inflight: requests never wait, so there is no queue to order",
        );
    }
}

/// Both scheduling keys of one upstream table, read after `queue`.
pub(crate) fn read(
    cx: &mut Ctx<'_>,
    t: &mut TableReader<'_, '_>,
    queue: Option<Queue>,
    capped: Option<bool>,
) -> (Option<Option<Priority>>, Option<Option<FairShare>>) {
    let priority_f = t.take("priority");
    let fair_f = t.take("fair_share");
    let priority = match &priority_f {
        Some(f) => read_priority(cx, f, queue).map(Some),
        None => Some(None),
    };
    let fair_share = match &fair_f {
        Some(f) => read_fair_share(cx, f).map(Some),
        None => Some(None),
    };
    if let Some(capped) = capped {
        let p = priority_f
            .as_ref()
            .zip(priority.as_ref().and_then(Option::as_ref));
        let path = t.path().to_string();
        check_caps(cx, &path, p, fair_f.as_ref(), capped);
    }
    (priority, fair_share)
}
