//! A Docker daemon as an [`ImageSource`]: pull (with the tag a digest-pinned archive promises),
//! inspect, ask the registry for the current digest, export, remove, and repair an image whose
//! export lacks layers.
//!
//! The repair is for a known engine bug of the containerd image store (moby#49473,
//! containerd#8973; fixed by moby#53615): a pull skips fetching a layer's blob when the layer is
//! already unpacked, from another image's differently compressed blob or from a classic archive
//! loaded earlier, and `docker save` then exits 0 with an archive lacking that layer. The unpacked
//! layer lives as long as any image holds it, so the repair removes the image and every image
//! sharing its layers up to the first missing one, then pulls the image again: with nothing
//! unpacked, the pull fetches every blob.
//!
//! Every call has the daemon's progress deadline: a stream that moves nothing, or a call left
//! unanswered, fails the image.

use bollard::query_parameters::{
    CreateImageOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use bytes::Bytes;
use futures_util::stream::{BoxStream, StreamExt, TryStreamExt};
use tracing::debug;

use crate::daemon::{CallError, DockerDaemon, registry_auth, stalled_message, with_deadline};
use crate::format::layout::Lacking;
use crate::image::reference::Reference;
use crate::platform::Platform;
use crate::registry::Lookup;
use crate::source::{ImageFacts, ImageSource, Operation, PullOutcome, Pulled, Repaired, SourceError};

/// The source error for a failed daemon call.
fn failed(operation: Operation, image: &Reference, error: bollard::errors::Error) -> SourceError {
    let call = CallError::new(String::new(), error);
    SourceError::new(operation, image.to_string(), call.status, call.message)
}

/// The source error for a call that made no progress within the deadline.
fn stalled(operation: Operation, image: &Reference) -> impl FnOnce(String) -> SourceError + use<> {
    let image = image.to_string();
    move |message| SourceError::new(operation, image, None, message)
}

impl ImageSource for DockerDaemon {
    async fn pull(
        &self,
        image: &Reference,
        platform: Option<&Platform>,
        auth: &Lookup,
    ) -> Result<Pulled, SourceError> {
        let mut options =
            CreateImageOptionsBuilder::default().from_image(&image.repository()).tag(&image.pull_tag());
        if let Some(platform) = platform {
            options = options.platform(&platform.to_string());
        }
        let limit = self.stall_timeout();
        let mut progress = self.client().create_image(Some(options.build()), None, registry_auth(auth));
        let mut outcome = PullOutcome::Unknown;
        let mut digest = None;
        loop {
            let Ok(item) = tokio::time::timeout(limit, progress.next()).await else {
                return Err(stalled(Operation::Pull, image)(stalled_message(limit)));
            };
            let Some(item) = item else { break };
            let info = item.map_err(|e| failed(Operation::Pull, image, e))?;
            let Some(status) = info.status else { continue };
            if let Some(d) = status.strip_prefix("Digest: ") {
                digest = Some(d.trim().to_owned());
            } else if status.starts_with("Status: Downloaded newer image") {
                outcome = PullOutcome::Downloaded;
            } else if status.starts_with("Status: Image is up to date") {
                outcome = PullOutcome::UpToDate;
            }
            if info.progress_detail.is_none() || status.starts_with("Status") {
                debug!(layer = info.id.as_deref().unwrap_or(""), "{status}");
            }
        }
        if image.needs_local_tag() {
            // Pulled by digest: give the image the tag the archive promises, so `docker load`
            // restores `name:tag`.
            let digested = format!("{}@{}", image.repository(), image.pull_tag());
            let options = TagImageOptionsBuilder::default()
                .repo(&image.repository())
                .tag(image.tag().unwrap_or("latest"))
                .build();
            let tag = async {
                self.client()
                    .tag_image(&digested, Some(options))
                    .await
                    .map_err(|e| failed(Operation::Tag, image, e))
            };
            self.answer(tag, stalled(Operation::Tag, image)).await?;
        }
        Ok(Pulled { outcome, digest })
    }

    async fn inspect(&self, image: &Reference) -> Result<ImageFacts, SourceError> {
        let name = image.export_name();
        let call = async {
            self.client().inspect_image(&name).await.map_err(|e| failed(Operation::Inspect, image, e))
        };
        let info = self.answer(call, stalled(Operation::Inspect, image)).await?;
        let id = info.id.ok_or_else(|| {
            SourceError::new(
                Operation::Inspect,
                image.to_string(),
                None,
                "the daemon reported no image ID".into(),
            )
        })?;
        let size = info.size.and_then(|s| u64::try_from(s).ok()).filter(|s| *s > 0);
        let platform = match (&info.os, &info.architecture) {
            (Some(os), Some(architecture)) => {
                Some(Platform::from_parts(os, architecture, info.variant.as_deref()))
            }
            _ => None,
        };
        Ok(ImageFacts { id, size, platform })
    }

    async fn remote_digest(&self, image: &Reference, auth: &Lookup) -> Result<String, SourceError> {
        // The daemon's distribution endpoint resolves the tag at the registry with the credentials
        // passed along (Docker 20.10: a manifest HEAD, then a GET of that manifest by digest to list
        // its platforms). Nothing is downloaded beyond the manifest.
        let name = image.export_name();
        let call = async {
            self.client()
                .inspect_registry_image(&name, registry_auth(auth))
                .await
                .map_err(|e| failed(Operation::Resolve, image, e))
        };
        let info = self.answer(call, stalled(Operation::Resolve, image)).await?;
        info.descriptor.digest.ok_or_else(|| {
            SourceError::new(
                Operation::Resolve,
                image.to_string(),
                None,
                "the registry reported no digest".into(),
            )
        })
    }

    fn export(&self, image: &Reference) -> BoxStream<'static, Result<Bytes, SourceError>> {
        let limit = self.stall_timeout();
        let (image, on_stall) = (image.clone(), image.clone());
        let bytes = self
            .client()
            .export_image(&image.export_name())
            .map_err(move |e| failed(Operation::Export, &image, e))
            .boxed();
        with_deadline(bytes, limit, move || stalled(Operation::Export, &on_stall)(stalled_message(limit)))
    }

    async fn repair(
        &self,
        image: &Reference,
        platform: Option<&Platform>,
        auth: &Lookup,
        lacking: Lacking,
    ) -> Result<Repaired, SourceError> {
        let fail = |e| failed(Operation::Repair, image, e);
        let name = image.export_name();
        let info = self
            .answer(
                async { self.client().inspect_image(&name).await.map_err(fail) },
                stalled(Operation::Repair, image),
            )
            .await?;
        let layers = info.root_fs.and_then(|r| r.layers).unwrap_or_default();
        // The layers up to the first missing one (the first when not known): every image holding
        // this chain keeps it unpacked.
        let first_missing = lacking.layer.filter(|i| *i < layers.len()).unwrap_or(0);
        let chain = &layers[..layers.len().min(first_missing + 1)];
        let mut holders: Vec<(String, String)> = Vec::new();
        if let Some(id) = info.id {
            holders.push((id, name.clone()));
        }
        if !chain.is_empty() {
            let options = ListImagesOptionsBuilder::default().all(true).build();
            let list = async { self.client().list_images(Some(options)).await.map_err(fail) };
            for summary in self.answer(list, stalled(Operation::Repair, image)).await? {
                if holders.iter().any(|(id, _)| *id == summary.id) {
                    continue;
                }
                let other = async { self.client().inspect_image(&summary.id).await.map_err(fail) };
                let Ok(other) = self.answer(other, stalled(Operation::Repair, image)).await else { continue };
                let other_layers = other.root_fs.and_then(|r| r.layers).unwrap_or_default();
                if other_layers.starts_with(chain) {
                    let label = summary
                        .repo_tags
                        .iter()
                        .find(|t| !t.contains("<none>"))
                        .cloned()
                        .unwrap_or_else(|| summary.id.clone());
                    holders.push((summary.id, label));
                }
            }
        }
        let options = RemoveImageOptionsBuilder::default().force(true).build();
        for (id, _) in &holders {
            let remove = async { Ok(self.client().remove_image(id, Some(options.clone()), None).await) };
            match self.answer(remove, stalled(Operation::Repair, image)).await? {
                Ok(_) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
                Err(e) => return Err(fail(e)),
            }
        }
        self.pull(image, platform, auth).await?;
        Ok(Repaired {
            removed: holders.into_iter().map(|(_, label)| label).collect(),
            layer: chain.last().cloned(),
        })
    }

    async fn remove(&self, image: &Reference) -> Result<(), SourceError> {
        let options = RemoveImageOptionsBuilder::default().build();
        let name = image.export_name();
        let call = async {
            self.client()
                .remove_image(&name, Some(options), None)
                .await
                .map(drop)
                .map_err(|e| failed(Operation::Remove, image, e))
        };
        self.answer(call, stalled(Operation::Remove, image)).await
    }
}
