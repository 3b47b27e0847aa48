select
    scenario_id,
    narrative,
    person_x,
    person_y,
    case
        when trim(narrative) = '' then 0
        else len(regexp_split_to_array(trim(narrative), '\s+'))
    end as n_words
from {{ source('warehouse', 'soda_scenarios') }}
