-- A sqlite3 workload for the LD_PRELOAD check: a recursive CTE, an index, GROUP BY,
-- a join, VACUUM and integrity_check. Output is deterministic.
PRAGMA cache_size = -20000;
CREATE TABLE t(id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, payload BLOB);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000)
INSERT INTO t SELECT x, x % 97, 'name-' || (x * 7919 % 100003), zeroblob(x % 300) FROM c;
CREATE INDEX t_name ON t(name);
CREATE TABLE g AS SELECT grp, count(*) AS n, sum(length(payload)) AS bytes, min(name) AS first FROM t GROUP BY grp;
SELECT count(*), sum(n), sum(bytes) FROM g;
SELECT grp, n, bytes, first FROM g ORDER BY bytes DESC, grp LIMIT 5;
SELECT count(*) FROM t JOIN g USING (grp) WHERE t.name > g.first;
UPDATE t SET payload = zeroblob(500 + id % 7) WHERE id % 10 = 0;
DELETE FROM t WHERE id % 3 = 0;
VACUUM;
SELECT count(*), sum(length(payload)) FROM t;
PRAGMA integrity_check;
