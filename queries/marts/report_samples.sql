-- The first $max_samples samples of each extraction run the report shows (per model and benchmark one run, the first
-- by shown_order in stg_runs), with their answers, for the report's samples page.
select s.run_id, s.model, s.benchmark, s.sample_key, s.status, s.question, s.output_text, s.parsed, s.gold, s.correct, s.error
from stg_samples as s
join stg_runs as r using (run_id)
where r.kind = 'extract'
qualify r.shown_order = min(r.shown_order) over (partition by s.model, s.benchmark)
    and row_number() over (partition by s.run_id order by s.sample_idx) <= $max_samples
order by s.model, s.benchmark, s.sample_idx
