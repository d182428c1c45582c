// The image choice of the container mode (service-images.ts) without an engine: TEST_IMAGES=official runs each
// service from its upstream image by a pinned digest, never by a tag alone (a tag moves), and refuses a service
// whose digest is not filled in; the local images are named by their recipe's hash.
import { afterEach, describe, expect, it } from "vitest";
import {
  imageCommand,
  OFFICIAL_IMAGES,
  SERVICE_IMAGES,
  serviceImageNames,
  serviceImageRef,
} from "../harness/service-images.ts";

const saved = process.env.TEST_IMAGES;
afterEach(() => {
  if (saved === undefined) delete process.env.TEST_IMAGES;
  else process.env.TEST_IMAGES = saved;
});

describe("service images", () => {
  it("local (default): registry-mirror-test/<service>:<recipe hash>, redis and registry share one rootfs", async () => {
    delete process.env.TEST_IMAGES;
    const names = await serviceImageNames();
    for (const image of SERVICE_IMAGES)
      expect(names[image]).toMatch(new RegExp(`^registry-mirror-test/${image}:[0-9a-f]{16}$`));
    expect(names.redis.split(":")[1]).toBe(names.registry.split(":")[1]);
    expect(names.ceph.split(":")[1]).not.toBe(names.redis.split(":")[1]);
    expect(imageCommand("registry", "docker-registry")).toBe("docker-registry");
  });

  it("official: each image by its pinned digest, or refused when none is pinned", async () => {
    process.env.TEST_IMAGES = "official";
    for (const image of SERVICE_IMAGES) {
      const { ref, digest } = OFFICIAL_IMAGES[image];
      if (digest === null) await expect(serviceImageRef(image)).rejects.toThrow(/no digest is pinned/);
      else
        await expect(serviceImageRef(image)).resolves.toMatch(
          new RegExp(`^${ref.replaceAll(".", "\\.")}@sha256:[0-9a-f]{64}$`),
        );
    }
    // The official registry image's binary is /bin/registry, not Debian's docker-registry.
    expect(imageCommand("registry", "docker-registry")).toBe("/bin/registry");
  });

  it("refuses an unknown TEST_IMAGES", async () => {
    process.env.TEST_IMAGES = "dockerhub";
    await expect(serviceImageNames()).rejects.toThrow(/TEST_IMAGES must be "local" or "official"/);
  });
});
