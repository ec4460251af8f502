/*
 * Session set-up frames (the rest of the protocol is CALL / REPLY, see xpur_custom_wire.h).
 *
 *  HELLO   (client -> daemon, session 0, request 0)
 *          u32 min_version, u32 max_version, u32 max_bulk wanted, str token, u32 client pid,
 *          str client host
 *  WELCOME (daemon -> client, carries the new session id)
 *          u32 version, u32 max_bulk, u32 keepalive_ms, u32 idle_timeout_ms, i32 driver version,
 *          str device name, 16 B uuid, u64 total memory (the slice), str PCI bus id,
 *          i32 least stream priority, i32 greatest stream priority,
 *          u32 n, n x (i32 attribute, i32 value)   -- every CUdevice_attribute the driver answers,
 *          str daemon version
 *  ERROR   (either way, then the connection closes): i32 refusal (XPUR_E_*), str reason
 *  PING    (client -> daemon, every second while idle; no reply): u32 buckets, buckets x u64
 *          counts of client-observed RTTs (XPUR_RTT_EDGES_US), u64 count, u64 sum_ns
 *  WAITING (daemon -> client, every keepalive period while a call blocks in the driver)
 *  BYE     (client -> daemon at exit)
 * REPLY fields start with: i32 status, i32 deferred status, u16 deferred api, u16 0, u32 0.
 */
#ifndef XPUR_HELLO_H
#define XPUR_HELLO_H

#define XPUR_HELLO_MAX 8192u
#define XPUR_WELCOME_MAX 16384u
#define XPUR_REPLY_PREFIX 16u
#define XPUR_DAEMON_VERSION "xpu-remoted 0.1"

#endif
