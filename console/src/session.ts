import { createContext } from 'preact';
import { useContext } from 'preact/hooks';
import type { Session } from './api.ts';

export const SessionContext = createContext<Session | undefined>(undefined);

/** The signed-in person; pages render only inside a session. */
export function useSession(): Session {
  return useContext(SessionContext)!;
}
