//! Reading the OpenAI-facing keys: on a route `model`, `model_prefix`, `api`,
//! `stream_usage` and `sse_keepalive`; on an upstream `hold` and `wake`.

use super::reader::{Ctx, Field, TableReader};
use super::types::{Api, RouteOpenAi, Wake};

/// The model keys of a route as far as they are valid, for the duplicate checks.
#[derive(Debug, Default)]
pub(crate) struct ModelKeys {
    /// `model` or `model_prefix` is present (valid or not).
    pub present: bool,
    pub names: Vec<String>,
    pub prefixes: Vec<String>,
}

/// The OpenAI keys of one `[[route]]` table.
pub(crate) fn read_route(
    cx: &mut Ctx<'_>,
    t: &mut TableReader<'_, '_>,
) -> (Option<RouteOpenAi>, ModelKeys) {
    let model_f = t.take("model");
    let prefix_f = t.take("model_prefix");
    let present = model_f.is_some() || prefix_f.is_some();
    let models = model_f.map_or(Some(Vec::new()), |f| {
        names(
            cx,
            &f,
            "\"llama-3-8b\" or [\"llama-3-8b\", \"llama-3-8b-lora-a\"]",
        )
    });
    let model_prefixes = prefix_f.map_or(Some(Vec::new()), |f| {
        names(cx, &f, "\"org/\" or [\"org/\", \"team/\"]")
    });
    let mut keys = ModelKeys {
        present,
        names: models.clone().unwrap_or_default(),
        prefixes: model_prefixes.clone().unwrap_or_default(),
    };
    keys.names.sort_unstable();
    keys.names.dedup();
    keys.prefixes.sort_unstable();
    keys.prefixes.dedup();
    let api_f = t.take("api");
    let api = api_f.as_ref().map_or(Some(Api::Plain), |f| {
        cx.choice(f, &[Api::OpenAi], Api::name)
    });
    let openai_only = |cx: &mut Ctx<'_>, f: &Field<'_, '_>, api: Option<Api>| {
        if api == Some(Api::Plain) {
            cx.error(
                &f.span(),
                &f.path,
                "needs OpenAI-shaped traffic; add api = \"openai\" to this route",
            );
        }
    };
    let stream_usage = match t.take("stream_usage") {
        Some(f) => {
            let v = cx.bool(&f);
            if v == Some(true) {
                openai_only(cx, &f, api);
            }
            v
        }
        None => Some(false),
    };
    let sse_keepalive = match t.take("sse_keepalive") {
        Some(f) => {
            let v = cx.duration(&f, false);
            openai_only(cx, &f, api);
            v.map(Some)
        }
        None => Some(None),
    };
    let read = (|| {
        Some(RouteOpenAi {
            models: models?,
            model_prefixes: model_prefixes?,
            api: api?,
            stream_usage: stream_usage?,
            sse_keepalive: sse_keepalive?,
        })
    })();
    (read, keys)
}

/// A non-empty string, or a non-empty list of distinct non-empty strings.
fn names(cx: &mut Ctx<'_>, f: &Field<'_, '_>, example: &str) -> Option<Vec<String>> {
    let expected = format!("a model name or a list of them, such as {example}");
    match f.value.get_ref() {
        toml::de::DeValue::String(_) => {
            return cx.nonempty(f, &expected).map(|s| vec![s.to_string()]);
        }
        toml::de::DeValue::Array(_) => {}
        _ => {
            cx.expected(f, &expected, "");
            return None;
        }
    }
    let items = cx.array(f, example)?;
    if items.is_empty() {
        cx.error(
            &f.span(),
            &f.path,
            format!("the list is empty; name at least one, as in {example}, or leave the key out"),
        );
        return None;
    }
    let mut out: Option<Vec<String>> = Some(Vec::with_capacity(items.len()));
    for item in &items {
        let name = cx.nonempty(item, &expected).map(str::to_string);
        if let (Some(n), Some(list)) = (&name, &out) {
            if list.contains(n) {
                cx.error(
                    &item.span(),
                    &item.path,
                    format!("{n:?} is listed twice; remove one"),
                );
            }
        }
        out = out.zip(name).map(|(mut v, n)| {
            v.push(n);
            v
        });
    }
    out
}

/// `hold = "60s"`: how long requests wait for a first ready replica.
pub(crate) fn read_hold(
    cx: &mut Ctx<'_>,
    t: &mut TableReader<'_, '_>,
) -> Option<Option<std::time::Duration>> {
    match t.take("hold") {
        Some(f) => cx.duration(&f, false).map(Some),
        None => Some(None),
    }
}

/// `wake = { url = "http://autoscaler/wake", method = "POST" }`.
pub(crate) fn read_wake(cx: &mut Ctx<'_>, t: &mut TableReader<'_, '_>) -> Option<Option<Wake>> {
    const EXAMPLE: &str = "{ url = \"http://autoscaler:8080/wake\", method = \"POST\" }";
    let Some(f) = t.take("wake") else {
        return Some(None);
    };
    if t.entries().iter().all(|(k, _, _)| *k != "hold") {
        cx.warn(
            &f.span(),
            &f.path,
            "wake without hold: requests still get 503 at once while the upstream wakes; \
             add hold = \"30s\" to hold them until a replica is ready",
        );
    }
    let mut w = cx.table(&f, EXAMPLE)?;
    let url = w.require(cx, "url", "url = \"http://autoscaler:8080/wake\"").and_then(|f| {
        let s = cx.nonempty(&f, "an http:// URL")?;
        match s.parse::<http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => {
                Some(uri)
            }
            _ => {
                cx.expected(
                    &f,
                    "an http:// URL with a host",
                    "such as \"http://autoscaler:8080/wake\" (https is not supported for wake calls)",
                );
                None
            }
        }
    });
    let method = w.take("method").map_or(Some(http::Method::POST), |f| {
        let s = cx.nonempty(&f, "an HTTP method such as \"POST\"")?;
        match http::Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
            Ok(m) => Some(m),
            Err(_) => {
                cx.expected(&f, "an HTTP method such as \"POST\"", "");
                None
            }
        }
    });
    w.finish(cx);
    Some(Some(Wake {
        url: url?,
        method: method?,
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::{parse, Api};

    const BASE: &str =
        "[listen]\nhttp = \"127.0.0.1:8080\"\n[upstream.a]\nbackends = [\"127.0.0.1:9001\"]\n";

    fn errors(src: &str) -> Vec<String> {
        match parse(src, Path::new("m.toml")) {
            Ok(_) => panic!("expected errors for:\n{src}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn reads_every_openai_key() {
        let src = format!(
            "{BASE}hold = \"60s\"\nwake = {{ url = \"http://scaler:8080/wake\" }}\n\
             [upstream.a.health]\nmodels = true\n\
             [[route]]\nname = \"r\"\npath = \"/v1\"\nupstream = \"a\"\nmodel = [\"m\", \"m-lora\"]\n\
             model_prefix = \"org/\"\napi = \"openai\"\nstream_usage = true\nsse_keepalive = \"10s\"\n\
             [[route]]\nname = \"plain\"\npath = \"/v1\"\nupstream = \"a\"\n\
             [[route]]\nname = \"other\"\npath = \"/v1\"\nupstream = \"a\"\nmodel = \"x\"\n"
        );
        let c = parse(&src, Path::new("m.toml")).unwrap().config;
        let o = &c.routes[0].openai;
        assert_eq!(o.models, ["m", "m-lora"]);
        assert_eq!(o.model_prefixes, ["org/"]);
        assert_eq!(o.api, Api::OpenAi);
        assert!(o.stream_usage);
        assert_eq!(o.sse_keepalive, Some(Duration::from_secs(10)));
        assert_eq!(c.routes[2].openai.models, ["x"]);
        let u = &c.upstreams[0];
        assert_eq!(u.hold, Some(Duration::from_secs(60)));
        let wake = u.wake.as_ref().unwrap();
        assert_eq!(wake.method, http::Method::POST);
        assert_eq!(wake.url.to_string(), "http://scaler:8080/wake");
        assert!(u.health.as_ref().unwrap().models);
    }

    #[test]
    fn reports_misuse_with_a_fix() {
        let src = format!(
            "{BASE}wake = {{ url = \"https://x/wake\", method = \"P T\" }}\n\
             [[route]]\nname = \"r\"\npath = \"/v1\"\nupstream = \"a\"\nmodel = [\"m\", \"m\"]\nstream_usage = true\n\
             [[route]]\nname = \"s\"\npath = \"/v1\"\nupstream = \"a\"\nmodel = \"m\"\napi = \"open-ai\"\n\
             [[route]]\nname = \"t\"\npath = \"/v1\"\nupstream = \"a\"\nmodel = []\n\
             [[route]]\nname = \"u\"\npath = \"/v1\"\nupstream = \"a\"\n\
             [[route]]\nname = \"v\"\npath = \"/v1\"\nupstream = \"a\"\n"
        );
        let e = errors(&src).join("\n");
        for want in [
            "upstream.a.wake.url: expected an http:// URL with a host",
            "upstream.a.wake.method: expected an HTTP method",
            "route[0].model[1]: \"m\" is listed twice; remove one",
            "route[0].stream_usage: needs OpenAI-shaped traffic; add api = \"openai\"",
            "route[1].api: expected one of \"openai\"",
            "model \"m\" under path \"/v1\" is already used by route[0]",
            "route[2].model: the list is empty",
            "route[4].path: path \"/v1\" without host is already used by route[3]",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
        // Invalid model keys do not cascade into duplicate errors.
        assert_eq!(e.matches("already used").count(), 2, "{e}");
    }
}
