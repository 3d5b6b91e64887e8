-- Idempotency keys belong to their caller's kind too: a user token that shares a service's
-- subject must not replay the service's runs. A user's run key keeps the format of 0005; a
-- service's or an admin's is prefixed with its kind ('service|<0005 run key>'), as
-- runner.store.run_key now builds it. Existing rows of a non-user actor move there, so a
-- command redelivered across the upgrade finds its run and replays it. The kind is the one
-- audited for the command that claimed the run (its first entry, replays last), else the one
-- kept with its acceptance; a run with neither (still running) is a service's when its actor
-- is one of the runner's own identities (a webhook's 'oprunner-...', a follow-up's 'op:...'),
-- else a user's. Apply it with the previous release's processes stopped: they would go on
-- writing every kind's keys in the old format.
UPDATE oprunner_runs AS r SET run_key = k.kind || '|' || r.run_key
FROM (
    SELECT run.run_key, coalesce(
        (SELECT a.data -> 'actor' ->> 'kind' FROM oprunner_audit AS a
         WHERE a.command_id = run.command_id AND a.actor_id = run.actor_id
           AND (a.data -> 'actor' ->> 'tenant') IS NOT DISTINCT FROM run.tenant_id
           AND a.decision = 'allow'
         ORDER BY coalesce((a.data ->> 'replayed')::boolean, false), a.id LIMIT 1),
        (SELECT x.actor ->> 'kind' FROM oprunner_accepted AS x
         WHERE x.command_id = run.command_id AND x.actor_id = run.actor_id),
        CASE WHEN run.actor_id LIKE 'op:%' OR run.actor_id LIKE 'oprunner-%' THEN 'service' END
    ) AS kind
    FROM oprunner_runs AS run
    WHERE run.actor_id IS NOT NULL
) AS k
WHERE r.run_key = k.run_key AND k.kind IN ('service', 'admin');
