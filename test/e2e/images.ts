// The images the end-to-end upstreams serve, built in memory by the harness (no internet, no Docker Hub):
//   docker.io  library/hello:1      Docker schema 2, one busybox layer: runnable
//   docker.io  e2e/tools:1          OCI manifest, four layers (busybox + three random, one shared with ghcr.io)
//   docker.io  e2e/multi:1          OCI index: linux/amd64 child runnable (busybox + the shared layer),
//                                   linux/arm64 child of random layers (never run, must never be fetched
//                                   by a linux/amd64 pull)
//   docker.io  e2e/shared:v1        same repository name and tag as on ghcr.io, different content
//   docker.io  e2e/retag:current    retagged upstream by the TTL scenario (before → after)
//   ghcr.io    team/tool:2          OCI manifest: busybox + the shared layer + one of its own
//   ghcr.io    e2e/shared:v1        the other e2e/shared:v1
// The busybox layer is the same blob in every image (Docker and OCI media types over the same bytes), so
// layers are shared between images, repositories and both upstreams.
// Every runnable image prints a marker unique to this test run, so output can only come from these images.
import { randomUUID } from "node:crypto";
import type { Credentials } from "../harness/registry.ts";
import {
  buildImage,
  buildIndex,
  busyboxLayer,
  pushImage,
  pushIndex,
  randomLayer,
  type Blob,
  type BuiltImage,
  type BuiltIndex,
} from "../harness/image-builder.ts";
import type { ImageRef, RegistryName } from "./client.ts";

export interface CatalogueImage {
  registry: RegistryName;
  repo: string;
  tag: string;
  /** The manifest the tag names (for e2e/multi: the index). */
  digest: string;
  /** Config of the image a linux/amd64 client takes. */
  configDigest: string;
  /** Config and layers a linux/amd64 pull fetches. */
  blobs: Blob[];
  /** What running it prints, for runnable images. */
  output?: string;
  /** The built image or index, for pushing and for fetching it through the mirror directly. */
  built: BuiltImage | BuiltIndex;
}

export interface MultiArchImage extends CatalogueImage {
  built: BuiltIndex;
  amd64: BuiltImage;
  arm64: BuiltImage;
}

export interface Catalogue {
  hello: CatalogueImage;
  tools: CatalogueImage;
  multi: MultiArchImage;
  sharedOnDockerHub: CatalogueImage;
  sharedOnGhcr: CatalogueImage;
  teamTool: CatalogueImage;
  retagBefore: CatalogueImage;
  retagAfter: CatalogueImage;
  /** Every image pushed at start-up (retagAfter is pushed by its scenario), in push order. */
  seeded(): CatalogueImage[];
}

/** Random layers are random per call; building the catalogue once per test file keeps digests stable within it. */
export function buildCatalogue(): Catalogue {
  const run = randomUUID().slice(0, 8);
  const busybox = busyboxLayer("oci");
  const busyboxDocker = busyboxLayer("docker");
  const sharedLayer = randomLayer(120_000);
  const say = (text: string) => ["/bin/sh", "-c", `echo ${text}`];

  const helloImage = buildImage({ format: "docker", layers: [busyboxDocker], cmd: say(`hello-${run}`) });
  const toolsImage = buildImage({
    format: "oci",
    layers: [busybox, randomLayer(300_000), randomLayer(200_000), sharedLayer],
    cmd: say(`tools-${run}`),
  });
  const amd64 = buildImage({ format: "oci", layers: [busybox, sharedLayer], cmd: say(`multi-amd64-${run}`) });
  const arm64 = buildImage({
    format: "oci",
    architecture: "arm64",
    layers: [randomLayer(150_000), randomLayer(50_000)],
  });
  const index = buildIndex([amd64, arm64]);
  const sharedHub = buildImage({
    format: "oci",
    layers: [busybox, randomLayer(60_000)],
    cmd: say(`shared-from-docker.io-${run}`),
  });
  const sharedGhcr = buildImage({
    format: "oci",
    layers: [busybox, randomLayer(60_000)],
    cmd: say(`shared-from-ghcr.io-${run}`),
  });
  const teamToolImage = buildImage({
    format: "oci",
    layers: [busybox, sharedLayer, randomLayer(80_000)],
    cmd: say(`team-tool-${run}`),
  });
  // Small on purpose: the TTL scenario times its pulls against the tag TTL.
  const retagBeforeImage = buildImage({ format: "oci", layers: [randomLayer(20_000)], labels: { version: "before" } });
  const retagAfterImage = buildImage({ format: "oci", layers: [randomLayer(20_000)], labels: { version: "after" } });

  const image = (
    registry: RegistryName,
    repo: string,
    tag: string,
    built: BuiltImage,
    output?: string,
  ): CatalogueImage => ({
    registry,
    repo,
    tag,
    digest: built.digest,
    configDigest: built.config.digest,
    blobs: built.blobs(),
    ...(output === undefined ? {} : { output: `${output}\n` }),
    built,
  });

  const catalogue: Omit<Catalogue, "seeded"> = {
    hello: image("docker.io", "library/hello", "1", helloImage, `hello-${run}`),
    tools: image("docker.io", "e2e/tools", "1", toolsImage, `tools-${run}`),
    multi: {
      registry: "docker.io",
      repo: "e2e/multi",
      tag: "1",
      digest: index.digest,
      configDigest: amd64.config.digest,
      blobs: amd64.blobs(),
      output: `multi-amd64-${run}\n`,
      built: index,
      amd64,
      arm64,
    },
    sharedOnDockerHub: image("docker.io", "e2e/shared", "v1", sharedHub, `shared-from-docker.io-${run}`),
    sharedOnGhcr: image("ghcr.io", "e2e/shared", "v1", sharedGhcr, `shared-from-ghcr.io-${run}`),
    teamTool: image("ghcr.io", "team/tool", "2", teamToolImage, `team-tool-${run}`),
    retagBefore: image("docker.io", "e2e/retag", "current", retagBeforeImage),
    retagAfter: image("docker.io", "e2e/retag", "current", retagAfterImage),
  };
  return {
    ...catalogue,
    seeded: () => [
      catalogue.hello,
      catalogue.tools,
      catalogue.multi,
      catalogue.sharedOnDockerHub,
      catalogue.sharedOnGhcr,
      catalogue.teamTool,
      catalogue.retagBefore,
    ],
  };
}

/** Pushes an image (or index with its children) under its tag. */
export async function pushCatalogueImage(registryUrl: string, img: CatalogueImage, auth: Credentials): Promise<void> {
  if ("children" in img.built) await pushIndex(registryUrl, img.repo, img.tag, img.built, auth);
  else await pushImage(registryUrl, img.repo, img.tag, img.built, auth);
}

export function byTag(img: CatalogueImage): ImageRef {
  return { registry: img.registry, repo: img.repo, tag: img.tag };
}

export function byDigest(img: CatalogueImage): ImageRef {
  return { registry: img.registry, repo: img.repo, digest: img.digest };
}

/** Distinct blobs of some images (shared layers once). */
export function distinctBlobs(images: CatalogueImage[]): Blob[] {
  const seen = new Map<string, Blob>();
  for (const img of images) for (const blob of img.blobs) seen.set(blob.digest, blob);
  return [...seen.values()];
}
