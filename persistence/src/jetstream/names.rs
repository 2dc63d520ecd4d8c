//! The names of everything the journal keeps in NATS, and the lanes the flusher reads.
//!
//! A lane is one stream: lane [`CATALOG_LANE`] is the catalog's (promotion-level events),
//! lane `FIRST_PARTITION_LANE + p` is partition `p`'s. Lane 0 is the single log of the
//! RocksDB journal, so the SQL cursors of both journals never share a row.

/// The catalog stream's lane.
pub const CATALOG_LANE: u32 = 1;
/// Partition 0's lane.
pub const FIRST_PARTITION_LANE: u32 = 2;

/// The names under one prefix.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    /// The stream of `lane`.
    pub fn stream(&self, lane: u32) -> String {
        match lane {
            CATALOG_LANE => format!("{}_CATALOG", self.prefix),
            lane => format!("{}_P{}", self.prefix, lane - FIRST_PARTITION_LANE),
        }
    }

    /// The one subject of `lane`'s stream.
    pub fn subject(&self, lane: u32) -> String {
        match lane {
            CATALOG_LANE => format!("{}.catalog", self.prefix),
            lane => format!("{}.p.{}", self.prefix, lane - FIRST_PARTITION_LANE),
        }
    }

    /// The key of `lane`'s lease.
    pub fn lease_key(&self, lane: u32) -> String {
        match lane {
            CATALOG_LANE => "catalog".to_owned(),
            lane => format!("partition.{}", lane - FIRST_PARTITION_LANE),
        }
    }

    pub fn lease_bucket(&self) -> String {
        format!("{}_LEASES", self.prefix)
    }

    pub fn meta_bucket(&self) -> String {
        format!("{}_META", self.prefix)
    }

    pub fn snapshot_bucket(&self) -> String {
        format!("{}_SNAPSHOTS", self.prefix)
    }
}

/// The lane of the item with key `item_key` among `partitions` partitions: its partition's,
/// as the engine computes it ([`seckill_engine::partition_of`]), so the journal and the
/// engine's owners agree on every item.
pub fn item_lane(item_key: u64, partitions: u32) -> u32 {
    FIRST_PARTITION_LANE + seckill_engine::partition_of(item_key, partitions)
}

/// Every lane of a cluster of `partitions` partitions, the catalog first (partition rows
/// in SQL refer to the catalog's).
pub fn all_lanes(partitions: u32) -> Vec<u32> {
    std::iter::once(CATALOG_LANE)
        .chain((0..partitions).map(|p| FIRST_PARTITION_LANE + p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lane as this file computed it before the engine had `partition_of`: the numbers
    /// of every stream already written.
    fn lane_as_stored(item_key: u64, partitions: u32) -> u32 {
        FIRST_PARTITION_LANE + (item_key % u64::from(partitions.max(1))) as u32
    }

    proptest::proptest! {
        #[test]
        fn an_item_lane_is_its_partition_lane(
            item_key in proptest::prelude::any::<u64>(),
            partitions in 0u32..=1_024,
        ) {
            let lane = item_lane(item_key, partitions);
            proptest::prop_assert_eq!(
                lane,
                FIRST_PARTITION_LANE + seckill_engine::partition_of(item_key, partitions)
            );
            proptest::prop_assert_eq!(lane, lane_as_stored(item_key, partitions));
            proptest::prop_assert!(all_lanes(partitions).contains(&lane) || partitions == 0);
            proptest::prop_assert_ne!(lane, CATALOG_LANE);
        }
    }

    #[test]
    fn lanes_keep_their_numbers() {
        assert_eq!(item_lane(0, 12), 2);
        assert_eq!(item_lane(13, 12), 3);
        assert_eq!(item_lane(u64::MAX, 64), 2 + 63);
        assert_eq!(
            item_lane(7, 0),
            FIRST_PARTITION_LANE,
            "no partitions is one"
        );
        assert_eq!(all_lanes(3), vec![CATALOG_LANE, 2, 3, 4]);
    }
}
