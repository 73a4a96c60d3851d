//! The lab's `kustomize build`: what kustomize-controller gets when it builds a
//! Kustomization's `spec.path` in a source artifact.
//!
//! This is the lab's own reading of the repository, written from upstream's
//! behaviour and not shared with the tool (the tool's Flux tree walker is what
//! the lab is meant to check). The upstream code it mirrors, by rule:
//!
//! - **Generated kustomization** (fluxcd/pkg `kustomize/kustomize_generator.go`
//!   `scanManifests`, kustomize/v1.35.4 as vendored by kustomize-controller
//!   v1.9.4): a directory without `kustomization.yaml`, `kustomization.yml` or
//!   `Kustomization` gets one listing, in `filepath.Walk` order (names sorted
//!   byte-wise, depth first, symlinked directories not followed), every `.yaml`
//!   / `.yml` file below it, except that a sub-directory holding a
//!   kustomization file is listed itself and not descended into. Each listed
//!   file must decode as Kubernetes objects, else the whole reconciliation
//!   fails with `failed to decode Kubernetes YAML from <file>: …` (a YAML file
//!   without `kind`, e.g. Helm values, is an error there, not skipped). Only
//!   the root directory (`spec.path`) is ever generated.
//! - **Artifact contents** (fluxcd/pkg `sourceignore` defaults applied by
//!   source-controller when it packs the artifact): `.git/`, `.gitignore`,
//!   `.gitmodules`, `.gitattributes`, `.github/`, `.circleci/`, the CI files
//!   and `.goreleaser.yml`, `.sops.yaml`, `.flux.yaml` are not in the
//!   artifact, so neither the scan nor `resources:` see them. A repository's
//!   own `.sourceignore` files are not read by the lab.
//! - **Kustomization files** (kustomize api v0.21.1 `types.Kustomization`,
//!   `KustTarget.Load`): unknown fields are an error (`invalid Kustomization:
//!   json: unknown field …`), `kind` must be `Kustomization`
//!   (`kustomize.config.k8s.io/v1beta1`) or `Component`
//!   (`kustomize.config.k8s.io/v1alpha1`), deprecated `bases:` are appended
//!   to `resources:`, two kustomization files in one directory are an error,
//!   and an empty nested kustomization is `kustomization.yaml is empty`
//!   (kustomize-controller adds `buildMetadata` to an empty root one, so the
//!   root never fails that way).
//! - **Accumulation** (`KustTarget.accumulateTarget` / `accumulateResources` /
//!   `accumulateComponents` / `accumulateDirectory`): `resources:` in listed
//!   order, each a file or a directory that must hold a kustomization file
//!   (`unable to find one of …`); a `kind: Component` directory is refused
//!   there. Then `components:` (directories with `kind: Component`), which
//!   add their resources to the *including* kustomization's and whose own
//!   `namespace:` transforms everything accumulated so far. Then the
//!   kustomization's own `namespace:` — so the outermost kustomization, applied
//!   last, wins. Adding a resource whose id (group, version, kind, name,
//!   effective namespace) is already present is `may not add resource with an
//!   already registered id`. Remote entries (`https://…`, `github.com/…`,
//!   `git@…`, …; kustomize's repospec prefixes) are skipped by the lab.
//! - **Loader roots** (`loader.FileLoader.errIfArgEqualOrHigher`): entering a
//!   directory that is, or contains, one already being built is `cycle
//!   detected: candidate root … contains visited root …`; fluxcd/pkg's secure
//!   file system refuses paths outside the artifact (`path … is not in or
//!   below …`). The lab adds a nesting limit ([`MAX_DEPTH`]) as a last guard.
//! - **Documents** (`resource.Factory.RNodesFromBytes`): a file is a YAML
//!   stream split on `---`; empty and null documents are dropped; every other
//!   one needs `kind` and, unless its kind ends in `List`, `metadata.name`;
//!   `…List` objects with `items` are replaced by their items (appended after
//!   the file's other documents, as kustomize does); a malformed file is
//!   `MalformedYAMLError: … in File: <file>`. Objects annotated
//!   `config.kubernetes.io/local-config` (other than `"false"`) are dropped at
//!   the end (`KustTarget.IgnoreLocal`).
//! - **Namespace transformer** (`builtins.NamespaceTransformerPlugin`,
//!   `filters/namespace`, `builtinpluginconsts/namespace.go`): sets
//!   `metadata.namespace` on every object kustomize does not know to be
//!   cluster-scoped (its built-in list; unknown custom kinds count as
//!   namespaced), renames `v1` Namespace objects to the namespace, and fails
//!   with `namespace transformation produces ID conflict` when two objects end
//!   up with one id. RoleBinding subjects are not rewritten by the lab.
//! - **Output order**: kustomize-controller builds with `krusty.Options` whose
//!   `Reorder` is unset, so the result stays in accumulation order (no legacy
//!   kind sort).
//! - **kustomize-controller around the build**: a missing `spec.path` is
//!   `kustomization path not found` (before building), `spec.targetNamespace`
//!   becomes the root kustomization's `namespace:` ([`build_for`]), and every
//!   built object needs `apiVersion`, `kind` and `metadata.name` (`failed to
//!   decode Kubernetes apiVersion, kind and name from: …`).
//!
//! Transformers that would change the objects the lab reads (patches, name
//! prefixes, replacements, vars, generators, plugins) are not simulated: a
//! kustomization using one fails the build with a message saying so, rather
//! than the lab silently building something Flux would not. Fields that only
//! touch what the lab never reads (labels, annotations, images, replicas,
//! CRD configurations, sort options) are accepted and ignored.

//!
//! The code is laid out like kustomize's: `builder` walks and accumulates
//! (`KustTarget`, the loader, the generated kustomization), `rules` holds the
//! rules it applies on the way (the artifact's exclusions, kustomization fields,
//! document validation, resource ids, the namespace transformer), and `outcome`
//! what a build yields ([`BuiltDoc`]) or why it failed ([`BuildError`]).

mod builder;
mod outcome;
mod rules;
#[cfg(test)]
mod tests;

use std::path::Path;

use builder::Builder;

pub use outcome::{BuildError, BuiltDoc};
pub use rules::MAX_DEPTH;

/// `kustomize build dir` inside the repository checkout `repo`.
pub fn build(repo: &Path, dir: &Path) -> Result<Vec<BuiltDoc>, BuildError> {
    build_for(repo, dir, None)
}

/// The build kustomize-controller runs for a Kustomization whose
/// `spec.targetNamespace` is `target_namespace`: the generator writes it into
/// the root kustomization as `namespace:` (replacing one already there).
pub fn build_for(
    repo: &Path,
    dir: &Path,
    target_namespace: Option<&str>,
) -> Result<Vec<BuiltDoc>, BuildError> {
    Builder::new(repo, MAX_DEPTH).root(dir, target_namespace)
}
