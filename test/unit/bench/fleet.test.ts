/**
 * The FLEET scenario's helpers (bench/fleet.ts, bench/targets.ts): how clients are spread over the instances,
 * where distribution's s3 driver keeps a blob (what the bench waits for in the bucket), the storage block
 * distribution is given, and the table's "n/a" when the reference could not run. Pure functions: no servers.
 */
import { describe, expect, it } from "vitest";
import { distributionBlobKey, renderFleetTable, roundRobin } from "../../../bench/fleet.ts";
import { summarize } from "../../../bench/stats.ts";
import { distributionStorageYaml } from "../../../bench/targets.ts";

const DIGEST = `sha256:ab${"0".repeat(62)}`;

describe("roundRobin", () => {
  it("gives client i the instance i mod n, so 16 clients over 3 instances are 6 / 5 / 5", () => {
    const urls = roundRobin(["a", "b", "c"], 16);
    expect(urls.slice(0, 4)).toEqual(["a", "b", "c", "a"]);
    expect(urls.filter((u) => u === "a")).toHaveLength(6);
    expect(urls.filter((u) => u === "b")).toHaveLength(5);
    expect(urls.filter((u) => u === "c")).toHaveLength(5);
  });

  it("refuses an empty list of instances", () => {
    expect(() => roundRobin([], 4)).toThrow(/no instances/);
  });
});

describe("distributionBlobKey", () => {
  it("is distribution's blob data path under rootdirectory, without the leading slash", () => {
    expect(distributionBlobKey("/one", DIGEST)).toBe(`one/docker/registry/v2/blobs/sha256/ab/${DIGEST.slice(7)}/data`);
    expect(distributionBlobKey("", DIGEST)).toBe(`docker/registry/v2/blobs/sha256/ab/${DIGEST.slice(7)}/data`);
  });
});

describe("distributionStorageYaml", () => {
  it("keeps the filesystem block the other scenarios have always used", () => {
    expect(distributionStorageYaml({ filesystemRoot: "/x" })).toEqual([
      "storage:",
      "  filesystem:",
      '    rootdirectory: "/x"',
      "  delete:",
      "    enabled: true",
      "  cache:",
      "    blobdescriptor: inmemory",
    ]);
  });

  it("points the s3 driver at a plain-HTTP endpoint, path style, with redirects off", () => {
    const yaml = distributionStorageYaml({
      s3: {
        endpoint: "http://127.0.0.1:7480",
        region: "us-east-1",
        bucket: "b",
        accessKeyId: "K",
        secretAccessKey: "S",
        rootDirectory: "/one",
      },
    }).join("\n");
    expect(yaml).toContain('    regionendpoint: "http://127.0.0.1:7480"');
    expect(yaml).toContain("    secure: false");
    expect(yaml).toContain("    forcepathstyle: true");
    expect(yaml).toContain("  redirect:\n    disable: true");
    expect(yaml).not.toContain("filesystem");
  });
});

describe("renderFleetTable", () => {
  const values: Record<string, number[]> = {
    "mirror-upstream-x": [1],
    "direct-upstream-x": [16],
    "mirror-ttfb-median-ms": [90],
    "direct-ttfb-median-ms": [60],
    "dist3-upstream-x": [19],
  };
  const get = (key: string) => summarize(values[key] ?? []);
  const opts = { clients: 16, mediumMiB: 100, bigMiB: 1024 };

  it("prints the ratios of the medians and each distribution column's own numbers", () => {
    const table = renderFleetTable(get, {}, opts);
    expect(table).toContain("| cold 100 MiB, 16 clients round-robin: upstream bytes ÷ blob | 1.00 | n/a | 19.00 |");
    expect(table).toMatch(/per-client TTFB median ms \| 90\.0 .*\| direct 60\.0 \| 1\.50× \|/);
  });

  it("prints n/a with the reason when distribution's s3 driver could not serve", () => {
    values["dist1-upstream-x"] = [17];
    const table = renderFleetTable(get, { "dist1-error": "GET /v2/...: HTTP 500" }, opts);
    expect(table).toContain("| 1.00 | n/a | 19.00 |");
    expect(table).toContain("distribution ×1 n/a: GET /v2/...: HTTP 500");
  });

  it("prints the warm rows as n/a with the reason when they failed, and keeps the cold rows", () => {
    values["warm-mirror-MBps"] = [300];
    values["warm-s3-MBps"] = [600];
    expect(renderFleetTable(get, {}, opts)).toMatch(/through one replica: MB\/s \| 300 .*\| S3 GET 600 \| 0\.50× \|/);
    const table = renderFleetTable(
      get,
      { "warm-error": "s3://mirror-fleet/blobs/...: not stored within 120000 ms" },
      opts,
    );
    expect(table).toMatch(/through one replica: MB\/s \| n\/a \| {2}\| {2}\| S3 GET n\/a \| {2}\| ≥ 0\.8× S3 GET \|/);
    expect(table).toContain("warm rows n/a: s3://mirror-fleet/blobs/...: not stored within 120000 ms");
    expect(table).toMatch(/per-client TTFB median ms \| 90\.0 .*\| direct 60\.0 \| 1\.50× \|/);
  });
});
