-- Which runs' rollups were built from the current definitions, and the head_metrics of the others
-- (defined by every query session after the raw views; the staging views of attnwh.queries read them).

-- runs every one of whose head_summary and head_ranks rows carries the current definitions_version()
create or replace view rolled_up_runs as
select run_id
from (select run_id, definitions from head_summary union all select run_id, definitions from head_ranks)
group by run_id
having bool_and(coalesce(definitions = definitions_version(), false));

-- the rows of every other run (parts older than versioned rollups, or rollups of other definitions)
create or replace view head_metrics_not_rolled_up as
select * from head_metrics where run_id not in (select run_id from rolled_up_runs);
