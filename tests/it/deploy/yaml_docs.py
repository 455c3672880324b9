"""Prints YAML files as JSON, {"files": {path: [document, ...]}, "errors": [...]}, for
the Rust tests to check against each other. With --kubernetes V1,V2 every Kubernetes
object is also validated against those versions' schemas (kubernetes-validate, strict:
unknown fields are errors); a file's Kustomization is skipped (it is kustomize's, not
the API server's)."""

import json
import sys

import yaml


def main(argv):
    versions = []
    if argv and argv[0] == "--kubernetes":
        versions = [v for v in argv[1].split(",") if v]
        argv = argv[2:]
    out = {"files": {}, "errors": []}
    if versions:
        import kubernetes_validate
    for path in argv:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        out["files"][path] = docs
        for doc in docs if versions else []:
            if doc.get("kind") == "Kustomization":
                continue
            what = "%s %s/%s" % (path, doc.get("kind"), doc.get("metadata", {}).get("name"))
            for version in versions:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    where = "/".join(str(p) for p in e.path)
                    out["errors"].append("%s: Kubernetes %s: %s: %s" % (what, version, where, e.message))
                except Exception as e:  # unknown kind or version: as much a failure
                    out["errors"].append("%s: Kubernetes %s: %s" % (what, version, e))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
