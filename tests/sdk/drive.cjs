// Drives one real Node SDK against the edge: every call type once, then flush.
//
//   node drive.cjs <posthog-node|segment-node|rudder-node> <host> <key> <run> [retries-expected <flood>]
//
// Prints one JSON line with every error, warning or retry the SDK reported; exits 1 on any.
// With `retries-expected` (a rate-limited run) only errors count, not logged retries.
const [sdk, host, key, run, mode, flood] = process.argv.slice(2);
const retriesExpected = mode === 'retries-expected';
const problems = [];
for (const level of retriesExpected ? [] : ['warn', 'error']) {
  console[level] = (...args) => problems.push(`${level}: ${args.join(' ')}`);
}
const user = `user-${run}`;

async function main() {
  if (flood) {
    // Spend the organisation's rate first, right before the SDK sends: its batch meets a 429.
    const events = Array.from({ length: Number(flood) }, (_, i) => ({ event_type: 't', event_name: 'flood', device_id: `flood-${i}` }));
    await fetch(`${host}/v1/events/batch`, { method: 'POST', headers: { 'X-Api-Key': key, 'Content-Type': 'application/json' }, body: JSON.stringify(events) });
  }
  if (sdk === 'posthog-node') {
    const { PostHog } = require('posthog-node');
    const c = new PostHog(key, { host, flushAt: 20, flushInterval: 200 });
    c.on('error', (e) => problems.push(`error event: ${e}`));
    c.capture({ distinctId: user, event: 'button_clicked', properties: { run } });
    c.identify({ distinctId: user, properties: { email: 'a@example.com', run } });
    c.alias({ distinctId: user, alias: `anon-${run}` });
    c.groupIdentify({ groupType: 'company', groupKey: `co-${run}`, properties: { run }, distinctId: user });
    c.capture({ distinctId: user, event: '$pageview', properties: { $current_url: 'https://x.example/', run } });
    c.capture({ distinctId: user, event: '$screen', properties: { $screen_name: 'Home', run } });
    c.capture({ distinctId: user, event: 'purchase', properties: { revenue: 9.99, currency: 'EUR', run } });
    await c.shutdown();
  } else if (sdk === 'segment-node') {
    const { Analytics } = require('@segment/analytics-node');
    const c = new Analytics({ writeKey: key, host, flushAt: 20, flushInterval: 200 });
    c.on('error', (e) => problems.push(`error event: ${JSON.stringify(e)}`));
    send(c);
    await c.closeAndFlush();
  } else {
    const Analytics = require('@rudderstack/rudder-sdk-node');
    const c = new Analytics(key, { dataPlaneUrl: host, flushAt: 20, flushInterval: 200, errorHandler: (e) => problems.push(`errorHandler: ${e}`) });
    send(c);
    await new Promise((resolve) => c.flush(resolve));
  }
}

function send(c) {
  c.track({ userId: user, event: 'Button Clicked', properties: { run } });
  c.identify({ userId: user, traits: { email: 'a@example.com', run } });
  c.alias({ userId: user, previousId: `anon-${run}` });
  c.group({ userId: user, groupId: `co-${run}`, traits: { run } });
  c.page({ userId: user, name: 'Home', properties: { run } });
  c.screen({ userId: user, name: 'Home', properties: { run } });
  c.track({ userId: user, event: 'Order Completed', properties: { revenue: 9.99, currency: 'EUR', run } });
}

main()
  .catch((e) => problems.push(`thrown: ${e}`))
  .finally(() => {
    process.stdout.write(JSON.stringify({ sdk, sent: 7, problems }) + '\n');
    process.exit(problems.length ? 1 : 0);
  });
