// graphile-worker as a peer of Cairn's scheduler (benches/support/peers.rs runs it).
//   node graphile.cjs work URL POLL_MS|default  a worker; prints READY, then one line per job:
//                                               JOB <kind> <i> <due ms> <started ms>
//   node graphile.cjs load URL KIND COUNT T0_MS SPREAD_MS
//                                               queues COUNT no-op jobs, job i due at
//                                               T0 + i * SPREAD / COUNT; prints LOADED
"use strict";
const { run, makeWorkerUtils, Logger } = require("graphile-worker");
const { performance } = require("node:perf_hooks");

const now = () => performance.timeOrigin + performance.now();
// Warnings and errors only: its info lines would mix with the job lines.
const logger = new Logger(() => (level, message) => {
  if (level === "error" || level === "warning") console.error(`graphile-worker: ${message}`);
});

async function work(url, poll) {
  const options = {
    connectionString: url,
    logger,
    noHandleSignals: false,
    taskList: {
      noop: async (payload) => {
        process.stdout.write(`JOB ${payload.k} ${payload.i} ${payload.at} ${now()}\n`);
      },
    },
  };
  if (poll !== "default") options.pollInterval = Number(poll);
  const runner = await run(options);
  process.stdout.write("READY\n");
  await runner.promise;
}

async function load(url, kind, count, t0, spread) {
  const utils = await makeWorkerUtils({ connectionString: url, logger });
  await utils.migrate();
  const jobs = [];
  for (let i = 0; i < count; i++) {
    const at = t0 + Math.floor((i * spread) / count);
    jobs.push({ identifier: "noop", payload: { k: kind, i, at }, runAt: new Date(at) });
  }
  for (let i = 0; i < jobs.length; i += 1000) {
    await utils.addJobs(jobs.slice(i, i + 1000));
  }
  await utils.release();
  process.stdout.write("LOADED\n");
  process.exit(0);
}

const [cmd, url, ...rest] = process.argv.slice(2);
const main =
  cmd === "work"
    ? work(url, rest[0])
    : load(url, rest[0], Number(rest[1]), Number(rest[2]), Number(rest[3]));
main.catch((e) => {
  console.error(e);
  process.exit(1);
});
