// Runs one scenario through clients/js/parley-verify.mjs for test_verify_js.py, which runs the
// same through the Python Verifier. stdin: {app_key, server_public_key (base64url),
// own_user_id, own_kids, steps: [{extend: {entries, head}} | {verify: frame}]}. stdout:
// {results, alerts, on_alert, named_head}: per step {ok: true} or {error: "DirectoryRewritten",
// message}, or the verdict {status, reason, user_id, kid}; the kids in `alerts` and those
// passed to onAlert; namedHead() at the end. Any other error fails the run (exit 1).
import { fromB64url } from "../../clients/js/parley-signing.mjs";
import { DirectoryRewritten, Verifier } from "../../clients/js/parley-verify.mjs";

let input = "";
for await (const chunk of process.stdin) input += chunk;
const { app_key, server_public_key, own_user_id, own_kids, steps } = JSON.parse(input);

const onAlert = [];
const verifier = new Verifier(app_key, fromB64url(server_public_key), {
  ownUserId: own_user_id,
  ownKids: own_kids,
  onAlert: (entry) => onAlert.push(entry.kid),
});
const results = steps.map((step) => {
  if (step.verify) {
    const { status, reason, userId, kid } = verifier.verify(step.verify);
    return { status, reason, user_id: userId, kid };
  }
  try {
    verifier.extendWire(step.extend.entries, step.extend.head);
    return { ok: true };
  } catch (error) {
    if (!(error instanceof DirectoryRewritten)) throw error;
    return { error: error.name, message: error.message };
  }
});
console.log(
  JSON.stringify({
    results,
    alerts: verifier.alerts.map((entry) => entry.kid),
    on_alert: onAlert,
    named_head: verifier.namedHead(),
  }),
);
