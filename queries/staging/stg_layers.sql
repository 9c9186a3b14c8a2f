-- one row per run and decoder layer: normalised depth and stage (the depth and stage macros of
-- warehouse/sql/definitions.sql)
select
    r.run_id,
    cast(l.layer as smallint) as layer,
    r.n_layers,
    depth(l.layer, r.n_layers) as depth,
    stage(l.layer, r.n_layers) as stage
from stg_runs as r, lateral (select unnest(range(r.n_layers)) as layer) as l
where r.n_layers is not null
