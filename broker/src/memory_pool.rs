//! The broker-wide budget for request bytes being read or handled (Kafka's
//! `queued.max.request.bytes` memory pool). Each connection may buffer one request of up to
//! `max_request_bytes`; without a shared cap, many connections sending large frames at once could
//! take the broker's memory (20 connections of 95 MB: RSS 27 MB → 1.97 GB). A connection that
//! has read a request's size reserves that many bytes before allocating for it and keeps them
//! until the request is handled; while the pool is spent it waits — and stops reading from its
//! socket, so TCP pushes back on the client — as Kafka mutes channels when its pool is empty.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct MemoryPool {
    permits: Arc<Semaphore>,
    capacity: usize,
}

/// Bytes held from the pool; returned when dropped.
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
}

impl MemoryPool {
    /// A pool of `capacity` bytes (at least 1; at most the semaphore's limit).
    pub fn new(capacity: usize) -> MemoryPool {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        MemoryPool {
            permits: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    /// Waits until `bytes` are free and holds them. A request larger than the whole pool takes
    /// all of it (it then runs alone rather than never).
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let n = bytes.min(self.capacity).min(u32::MAX as usize) as u32;
        // The semaphore is never closed, so acquiring cannot fail; were it closed, that would
        // mean no limit, never a stuck connection.
        Reservation {
            _permit: self.permits.clone().acquire_many_owned(n).await.ok(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reservations_wait_for_bytes_to_come_back() {
        let pool = Arc::new(MemoryPool::new(100));
        let a = pool.reserve(60).await;
        assert_eq!(pool.available(), 40);
        let waiting = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.reserve(50).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "50 bytes are not free yet");
        drop(a);
        let b = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("admitted once the first reservation is dropped")
            .unwrap();
        assert_eq!(pool.available(), 50);
        drop(b);
        // Larger than the pool: takes all of it.
        let all = pool.reserve(1000).await;
        assert_eq!(pool.available(), 0);
        drop(all);
        assert_eq!(pool.available(), 100);
    }
}
