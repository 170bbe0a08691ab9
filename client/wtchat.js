// placeholder: the browser client is being written
export {};
