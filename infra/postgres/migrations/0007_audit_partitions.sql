-- The audit log stays append-only, but by month: an operator archives old months by
-- detaching their partition (ALTER TABLE oprunner_audit DETACH PARTITION ...), which no row
-- trigger can refuse and no DELETE needs. The rows from before this migration become one
-- partition, up to the start of next month; later months get one partition each, created
-- ahead by oprunner_audit_partitions() (at every start and by the maintenance job). A
-- default partition takes any row no month is ready for, so an insert never fails.
ALTER TABLE oprunner_audit RENAME TO oprunner_audit_before_0007;
DROP TRIGGER oprunner_audit_append_only ON oprunner_audit_before_0007;

CREATE TABLE oprunner_audit (
    id          bigint      NOT NULL DEFAULT nextval('oprunner_audit_id_seq'),
    command_id  text        NOT NULL,
    op          text        NOT NULL,
    version     text,
    status      text        NOT NULL,
    decision    text,
    actor_id    text,
    data        jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, recorded_at)
) PARTITION BY RANGE (recorded_at);
ALTER SEQUENCE oprunner_audit_id_seq OWNED BY oprunner_audit.id;
CREATE INDEX oprunner_audit_by_command ON oprunner_audit (command_id);
CREATE TRIGGER oprunner_audit_append_only BEFORE UPDATE OR DELETE ON oprunner_audit
    FOR EACH ROW EXECUTE FUNCTION oprunner_audit_append_only();

-- Months are UTC months whatever the session's time zone: the arithmetic is done on UTC
-- wall-clock timestamps (timestamptz + interval would step in the session's zone).
DO $$
DECLARE
    next_month timestamptz := (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month')
                              AT TIME ZONE 'UTC';
BEGIN
    ALTER TABLE oprunner_audit_before_0007 DROP CONSTRAINT oprunner_audit_pkey;
    ALTER TABLE oprunner_audit_before_0007 ADD PRIMARY KEY (id, recorded_at);
    EXECUTE format(
        'ALTER TABLE oprunner_audit ATTACH PARTITION oprunner_audit_before_0007 '
        'FOR VALUES FROM (MINVALUE) TO (%L)', next_month);
END $$;
CREATE TABLE oprunner_audit_default PARTITION OF oprunner_audit DEFAULT;

-- One partition per month, this month and ``ahead`` more; returns the names it created. A
-- month inside the pre-0007 partition is skipped; one whose rows already went to the
-- default partition (the job did not run for months) is left there, with a warning.
CREATE FUNCTION oprunner_audit_partitions(ahead integer DEFAULT 2) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    this_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');  -- UTC wall clock
    low timestamp;
    name text;
BEGIN
    FOR i IN 0..ahead LOOP
        low := this_month + make_interval(months => i);
        name := 'oprunner_audit_' || to_char(low, 'YYYY_MM');
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        BEGIN
            EXECUTE format('CREATE TABLE %I PARTITION OF oprunner_audit FOR VALUES FROM (%L) TO (%L)',
                           name, (low AT TIME ZONE 'UTC')::text,
                           ((low + interval '1 month') AT TIME ZONE 'UTC')::text);
            RETURN NEXT name;
        EXCEPTION
            WHEN invalid_object_definition THEN NULL;  -- overlaps the pre-0007 partition
            WHEN check_violation THEN
                RAISE WARNING 'audit rows of % are in oprunner_audit_default', name;
        END;
    END LOOP;
END $$;
SELECT oprunner_audit_partitions();
