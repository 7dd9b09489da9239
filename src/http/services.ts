import type { AdminService } from '../admin/admin-service.ts';
import type { ApprovalService } from '../approvals/approval-service.ts';
import type { CredentialService } from '../credentials/credential-service.ts';
import type { LeaseService } from '../leases/lease-service.ts';
import type { AuditReader } from '../lists/audit-query.ts';
import type { ListService } from '../lists/list-service.ts';
import type { TaskLeaseReader } from '../lists/task-leases.ts';
import type { RotationService } from '../ops/rotation.ts';
import type { TaskService } from '../tasks/task-service.ts';

/** The services the HTTP routes call. */
export interface Services {
  tasks: TaskService;
  credentials: CredentialService;
  leases: LeaseService;
  approvals: ApprovalService;
  rotation: RotationService;
  admin: AdminService;
  lists: ListService;
  audit: AuditReader;
  taskLeases: TaskLeaseReader;
}
