/** A status word with a colour that is never the only cue (the word is always there). */
export function Status(props: { value: string }) {
  return <span class={`status status-${props.value.replace(/[^a-z_]/g, '')}`}>{props.value.replace(/_/g, ' ')}</span>;
}
